# tidings as a container image: docs/deploy.md#containers.
#   docker build -t tidings .
#   docker run -p 8080:8080 -v tidings-data:/var/lib/tidings tidings
# The root file system can be read-only (--read-only): the process writes only
# under /var/lib/tidings (the volume: the embedded SQLite store).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tidings ./tidings
# every dependency as a wheel, so the final image needs no compiler
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/tidings tidings \
    && mkdir -p /var/lib/tidings && chown tidings /var/lib/tidings
USER 10001
WORKDIR /var/lib/tidings
ENV TIDINGS_HOST=0.0.0.0 TIDINGS_PORT=8080 TIDINGS_DATA=/var/lib/tidings/data \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
VOLUME ["/var/lib/tidings"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TIDINGS_PORT', '8080'), timeout=2).status != 200)"]
ENTRYPOINT ["tidings"]
CMD ["serve"]
