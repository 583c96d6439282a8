# One image for the operator, the sidecar and queuectl (the chart runs `queue-operator`; the
# webhook injects the same image running `queue-sidecar`). Not built in CI: these machines have
# no Docker engine.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY sidecar sidecar
COPY operator operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin queue
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532
ENTRYPOINT ["queue-operator"]
