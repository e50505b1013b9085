# hitl-grpc on Debian's own Python 3.11, as user 10001:10001, health-checked over the gRPC
# health protocol. `make image` builds it on a base made by debootstrap from a pinned
# Debian point release (deploy/image.sh); a plain `docker build` uses BASE below.
#
# Listens on: gRPC on 0.0.0.0:50051, plaintext unless HITL_TLS_CERT_FILE/HITL_TLS_KEY_FILE
# are set (mount the pair); metrics on 127.0.0.1:9464 inside the container, reachable
# from nowhere else until HITL_METRICS_LISTEN is set on purpose.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS python
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# The dependency layer: the wheels `make image` downloaded for the runtime requirements of
# pyproject.toml at the versions of the lock file (build/image-wheels/deps), installed
# offline. It is rebuilt only when they change, not with the source.
FROM python AS deps
COPY constraints.txt /src/
COPY build/image-wheels/deps /wheels/deps
RUN python3 -m venv /opt/hitl \
 && /opt/hitl/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels/deps \
      --constraint /src/constraints.txt /wheels/deps/*.whl \
 && rm -rf /wheels /src

# Everything but the service's wheel comes first: with vfs storage each step is a full
# copy, so a source change rebuilds only the last three.
FROM deps
ARG BASE
ARG VERSION=0.1.0
RUN groupadd --gid 10001 hitl \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/hitl --no-create-home \
      --shell /usr/sbin/nologin hitl \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/hitl
LABEL org.opencontainers.image.title="hitl-grpc" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE}"
ENV PATH=/opt/hitl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HITL_LISTEN=0.0.0.0:50051 \
    HITL_DATABASE_URL=sqlite:////var/lib/hitl/hitl.db
WORKDIR /var/lib/hitl
VOLUME /var/lib/hitl
EXPOSE 50051
# `hitl-grpc health` asks the address in HITL_LISTEN: the one the server was given.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["hitl-grpc", "health", "--timeout", "3"]
# umask 077: the database, its WAL and the generated signing key are the owner's alone.
ENTRYPOINT ["/bin/sh", "-c", "umask 077 && exec hitl-grpc \"$@\"", "hitl-grpc"]
CMD ["serve"]
# The service itself: the wheel `make image` built from this tree (build/image-wheels/app).
COPY build/image-wheels/app /wheels
RUN /opt/hitl/bin/pip install --no-cache-dir --no-deps --no-index /wheels/*.whl \
 && rm -rf /wheels
USER 10001:10001
