# The project image, used by docker-compose.yml for the simulator (and, later, the forecaster).
#
#   docker compose build
#
# torch is installed first, pinned, from PyTorch's CPU wheel index: an unpinned torch from PyPI
# pulls several GB of CUDA libraries. (`make` on a developer machine uses `pip install
# torch==2.13.0` instead; this Dockerfile is for users who build the image themselves and needs
# network access to download.pytorch.org and PyPI.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY . /app
RUN pip install '/app[ml]' \
    && useradd --system --uid 10001 --home-dir /app --no-create-home app

USER 10001
EXPOSE 9100
CMD ["python", "-m", "simulator", "serve"]
