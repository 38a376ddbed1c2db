"""The exposition contract and HTTP surface: snapshot, collector, hub and the FastAPI app.

`import exporter` needs no torch and no pandas; nothing here imports another project package.
"""
