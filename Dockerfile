# The tagspace daemon: slim, non-root, CPU-only torch, health-checked.
# Build: docker build -t tagspace . ; run: see docker-compose.yml (models on a volume).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tagspace ./tagspace
COPY daemon ./daemon
# CPU torch from PyTorch's CPU index (the default PyPI wheel carries CUDA: gigabytes)
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tagspace && mkdir /models && chown tagspace /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TAGSPACE_HTTP_ADDR=0.0.0.0:8080 \
    TAGSPACE_MODEL_DIR=/models \
    PYTHONUNBUFFERED=1
USER tagspace
VOLUME /models
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2).status != 200)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["tagspace", "daemon"]
