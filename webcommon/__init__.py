"""HTTP pieces that the simulator and the exporter both serve with, and nothing else: this
package imports no other project package, so the simulator still stands alone."""
