# syntax=docker/dockerfile:1
# The serving backend with TensorFlow's CUDA libraries (tensorflow[and-cuda]) and
# the demo model. Every setting is an environment variable (README: Configuration).
#   docker build -t tf-grpc-serving .
#   docker run --gpus all -p 50051:50051 -p 8080:8080 tf-grpc-serving
# Without --gpus (or without a GPU) the same image runs on the CPU.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY requirements.txt ./
# The pinned requirements, with TensorFlow's CUDA and cuDNN wheels (same version).
RUN TF_VERSION="$(sed -n 's/^tensorflow==//p' requirements.txt)" \
    && pip install --no-cache-dir -r requirements.txt "tensorflow[and-cuda]==${TF_VERSION}"
COPY pyproject.toml README.md ./
COPY generated/ generated/
COPY server/ server/
COPY client/ client/
COPY wire/ wire/
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=10001:10001 models/ models/
RUN mkdir -p logs data && chown 10001:10001 logs data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MODEL_DIR=/app/models \
    GRPC_SERVER_ADDRESS=0.0.0.0:50051 \
    HTTP_SERVER_ADDRESS=0.0.0.0:8080 \
    HEALTH_SERVER_ADDRESS=0.0.0.0:8081 \
    ACCESS_LOG_PATH=/app/logs/access.log \
    UPLOAD_DIR=/app/data/uploads
USER 10001:10001
EXPOSE 50051 8080 8081
# gRPC health on the plaintext health-only port: works with TLS and API keys on.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "client", "--target", "127.0.0.1:8081", "--timeout", "4", "health", "--service", "readiness"]
ENTRYPOINT ["python", "-m", "server"]
