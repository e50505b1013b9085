# hitl-grpc: slim, non-root, health-checked over the gRPC health protocol.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY generated ./generated
COPY hitl_grpc ./hitl_grpc
RUN pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HITL_LISTEN=0.0.0.0:50051 \
    HITL_METRICS_LISTEN=0.0.0.0:9464 \
    HITL_DATABASE_URL=sqlite:////var/lib/hitl/hitl.db
RUN useradd --system --uid 10001 --home-dir /var/lib/hitl --create-home hitl
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER hitl
WORKDIR /var/lib/hitl
VOLUME /var/lib/hitl
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["hitl-grpc", "health", "--address", "127.0.0.1:50051", "--timeout", "3"]
ENTRYPOINT ["hitl-grpc"]
CMD ["serve"]
