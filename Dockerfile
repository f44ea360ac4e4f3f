# One twisted_kv node.  Build:
#
#     docker build -t twisted-kv .
#     docker build -t twisted-kv --build-arg BASE=localhost/debian12-python .   # any base with python3, venv, pip
#
# Run node n1 of a cluster file mounted at /etc/twisted-kv/cluster.ini
# (node id and cluster file from the environment, or as arguments, which win):
#
#     docker run -v ./cluster.ini:/etc/twisted-kv/cluster.ini:ro -e KV_NODE=n1 twisted-kv
#     docker run ... twisted-kv --node n1 --ftp-passive-address 203.0.113.7
#
# compose.yaml runs a three-node cluster of it; README.md ("Containers") has more.

# An official slim Python image by default; a plain Debian 12 with python3,
# python3-venv, python3-pip, ca-certificates and curl works too (no compiler:
# every dependency comes as a wheel).
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS build
# pip's settings for fetching the dependencies here, if the network needs
# them (a package mirror, a proxy's CA file); they stay in this stage.
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels /src

FROM ${BASE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PATH=/opt/twisted-kv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KV_CONFIG=/etc/twisted-kv/cluster.ini \
    KV_NODE=
# The wheels are mounted from the first stage for this step only, so that
# none of them stays in a layer of the image; nothing is fetched here.  The
# node needs neither pip nor setuptools, nor Twisted's own tests (26 MB).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/twisted-kv \
 && /opt/twisted-kv/bin/pip install --no-index --find-links /wheels twisted_kv \
 && /opt/twisted-kv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && /opt/twisted-kv/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && find /opt/twisted-kv/lib -depth -type d -name test -path '*/site-packages/twisted/*' -exec rm -rf {} + \
 && useradd --user-group --uid 10001 --no-create-home --home-dir /var/lib/twisted-kv --shell /usr/sbin/nologin kv \
 && mkdir -p /etc/twisted-kv /var/lib/twisted-kv \
 && chown kv:kv /var/lib/twisted-kv

# The cluster file's data_dir: node nX keeps its files in /var/lib/twisted-kv/nX/.
VOLUME ["/var/lib/twisted-kv"]
WORKDIR /var/lib/twisted-kv
USER kv

# twistd stops the node cleanly on SIGTERM (it installs its own handler, so
# this holds as PID 1 too, where the kernel ignores unhandled signals).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "twisted_kv.app.healthcheck"]

# exec: twistd is PID 1 and receives the stop signal itself.
ENTRYPOINT ["/bin/sh", "-c", "exec twistd -n --pidfile= kvnode --config \"$KV_CONFIG\" --node \"$KV_NODE\" \"$@\"", "twistd"]
