# syntax=docker/dockerfile:1
# One image for everything: `mailwarden operator`, `serve` and `unsubscribe-server`.
#   docker build -t mailwarden:0.1.0 .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mailwarden
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY mailwarden ./mailwarden
COPY filter_server ./filter_server
COPY unsubscribe_store ./unsubscribe_store
COPY operator ./operator
COPY mailwarden_local ./mailwarden_local
# A regular (non-editable) install with every component's dependencies ([all]): operator/
# becomes the package mailwarden_operator.
RUN /opt/mailwarden/bin/pip install ".[all]" \
 && /opt/mailwarden/bin/python -c "import mailwarden_operator.main, filter_server.server.worker, unsubscribe_store.server"

FROM python:3.11-slim-bookworm
# A fixed non-root user; the Deployments run as this UID with a read-only root filesystem.
RUN groupadd --gid 65532 mailwarden \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mailwarden
COPY --from=build /opt/mailwarden /opt/mailwarden
ENV PATH=/opt/mailwarden/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["mailwarden"]
CMD ["--help"]
