# One image for both roles (docs/deploy.md, "Docker"):
#   docker run ... zerogate server -c /etc/zerogate/zerogate.yaml       (the default command)
#   docker run -e ZEROGATE_TUNNEL_TOKEN ... zerogate connector run --url http://app:8080
# Runs as an unprivileged user (uid 10001); the store and state live in /var/lib/zerogate.

FROM python:3.11-slim-bookworm AS build
WORKDIR /build
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir --root-user-action=ignore --prefix=/install -c constraints.txt .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/zerogate --create-home \
        --shell /usr/sbin/nologin zerogate \
    && install -d -m 0750 -o root -g zerogate /etc/zerogate
COPY --from=build /install /usr/local
COPY deploy/docker/healthcheck.py /usr/local/lib/zerogate-healthcheck.py
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ZEROGATE_HEALTH_PORT=8080
USER 10001:10001
WORKDIR /var/lib/zerogate
VOLUME ["/var/lib/zerogate"]
# the portal and applications (listen.http), the tunnel listener (listen.tunnel)
EXPOSE 8080 7844
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/zerogate-healthcheck.py"]
ENTRYPOINT ["zerogate"]
CMD ["server", "-c", "/etc/zerogate/zerogate.yaml"]
