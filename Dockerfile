# syntax=docker/dockerfile:1
# dropbox-daemon as a container image (docs/operations.md, "Containers").
#
#   CPU image (default):  docker build -t dropbox-daemon .
#   CUDA image:           docker build --build-arg TORCH=cu126 -t dropbox-daemon:cuda .
#   offline, from wheels: make wheelhouse   (on a host that reaches the package index)
#                         docker build --build-arg WHEELS=local -t dropbox-daemon .
#
# The image never downloads anything at run time: no weights, no packages. Mount the
# model file and point [models] wav2lip (or DROPBOX_DAEMON_WAV2LIP) at it.

# BASE: any Debian or Ubuntu image with Python 3.11+ as python3 and its venv module
# (python:3.11-slim-bookworm, or a CUDA runtime image with Python added). The tests build
# from a local bookworm made by mmdebstrap.
ARG BASE=python:3.11-slim-bookworm
# WHEELS: online (pip reaches the package index) or local (./.wheelhouse only, --no-index)
ARG WHEELS=online

# The wheels the build installs from: the build context's .wheelhouse/ (make wheelhouse), or
# nothing. Only the stage WHEELS names is built, so .wheelhouse/ is needed only offline.
FROM scratch AS wheels-online
# a stand-in file: a stage with no file has nothing to copy from
COPY constraints.txt /online-build
FROM scratch AS wheels-local
COPY .wheelhouse/ /
FROM wheels-${WHEELS} AS wheels

FROM ${BASE}
# TORCH: cpu, or a CUDA build's tag on download.pytorch.org (cu126, cu128, ...)
ARG TORCH=cpu
ARG WHEELS
LABEL org.opencontainers.image.title="dropbox-daemon" \
      org.opencontainers.image.description="Job drops on folders into lip-synced videos" \
      io.dropbox-daemon.torch="${TORCH}"
# One unprivileged user; its uid/gid are the ones the shared volume must let write
# (docs/operations.md "Containers": file ownership). Numeric, so runAsNonRoot can check it.
RUN set -eu; \
    groupadd --system --gid 10001 dropbox; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dropbox-daemon \
        --no-create-home --shell /usr/sbin/nologin dropbox; \
    mkdir -p /data/inbox /data/outbox /var/lib/dropbox-daemon /etc/dropbox-daemon /models; \
    chown 10001:10001 /data /data/inbox /data/outbox /var/lib/dropbox-daemon; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /root/.cache
COPY pyproject.toml constraints.txt constraints-gpu.txt /opt/dropbox-daemon/src/
# Torch and every dependency, in a layer of their own: a change to the code does not
# install them again (only pyproject.toml, the constraints or the build arguments do).
# The CPU build is pinned by constraints.txt; a CUDA build keeps the index's newest for
# its tag (constraints-gpu.txt, as on a GPU host: README "GPU hosts"). The wheels are
# mounted for the step, not copied: they never become a layer.
RUN --mount=type=bind,from=wheels,target=/wheels set -eu; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore; \
    python3 -m venv /opt/dropbox-daemon; \
    # the venv's own setuptools: the package builds in pip's isolated environment
    /opt/dropbox-daemon/bin/pip uninstall --quiet --yes setuptools 2>/dev/null || true; \
    cd /opt/dropbox-daemon/src; \
    if [ "$WHEELS" = local ]; then from="--no-index --find-links /wheels"; torch_from="$from"; \
    else from=""; torch_from="--index-url https://download.pytorch.org/whl/$TORCH"; fi; \
    if [ "$TORCH" = cpu ]; then pins=constraints.txt; else pins=constraints-gpu.txt; fi; \
    python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > deps.txt; \
    /opt/dropbox-daemon/bin/pip install $torch_from -c "$pins" torch; \
    /opt/dropbox-daemon/bin/pip install $from -c "$pins" -r deps.txt dumb-init; \
    # what a render never runs (about 230 MB): torch's C++ headers (extensions,
    # torch.compile) and its test programs (torch_shm_manager stays: shared-memory
    # tensors), the test suites of numpy, sympy, networkx and mpmath
    sp=$(/opt/dropbox-daemon/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
    rm -rf "$sp/torch/include" "$sp/torch/test"; \
    find "$sp/torch/bin" -type f ! -name torch_shm_manager -delete; \
    find "$sp/numpy" "$sp/sympy" "$sp/networkx" "$sp/mpmath" -depth -type d -name tests -exec rm -rf {} +
COPY README.md /opt/dropbox-daemon/src/
COPY dropbox_daemon /opt/dropbox-daemon/src/dropbox_daemon
RUN --mount=type=bind,from=wheels,target=/wheels set -eu; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore; \
    if [ "$WHEELS" = local ]; then from="--no-index --find-links /wheels"; else from=""; fi; \
    /opt/dropbox-daemon/bin/pip install $from --no-deps /opt/dropbox-daemon/src; \
    rm -rf /opt/dropbox-daemon/src; \
    /opt/dropbox-daemon/bin/python -c "import dropbox_daemon.cli, torch, cv2, av"
# The image's config: every path in a volume. Override a key by environment
# (DROPBOX_DAEMON_INSTANCE, _STATE_DIR, _STORE_URL, _HTTP_LISTEN, _HTTP_TOKEN_FILE, _WAV2LIP)
# or mount your own file over /etc/dropbox-daemon/config.toml.
RUN printf '%s\n' \
    '# dropbox-daemon in a container: the data in volumes (docs/operations.md "Containers")' \
    '[daemon]' \
    'state_dir = "/var/lib/dropbox-daemon"' \
    'outbox = "/data/outbox"' \
    '' \
    '[[inbox]]' \
    'name = "default"' \
    'path = "/data/inbox"' \
    '' \
    '[[inbox]]' \
    'name = "smoke"' \
    'path = "/var/lib/dropbox-daemon/smoke-inbox"' \
    'keep_days = 3.0' \
    > /etc/dropbox-daemon/config.toml
ENV PATH=/opt/dropbox-daemon/bin:$PATH \
    DROPBOX_DAEMON_CONFIG=/etc/dropbox-daemon/config.toml \
    HOME=/var/lib/dropbox-daemon \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
VOLUME ["/data", "/var/lib/dropbox-daemon"]
USER 10001:10001
WORKDIR /var/lib/dropbox-daemon
# healthy: the daemon runs and its own heartbeat (health.json) is fresh and says ok or
# degraded; it reads no database, so a farm's outage shows in the heartbeat, not as a
# storm of health checks. start-period: the worker loads its models first.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["dropbox-daemon", "healthcheck"]
# dumb-init as PID 1 reaps zombies and hands SIGTERM to the daemon alone (like the systemd
# unit's KillMode=mixed): the daemon drains, then stops its worker itself. Give it time:
# docker stop -t 75 / compose stop_grace_period (stop_timeout_seconds is 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["dumb-init", "--single-child", "--", "dropbox-daemon"]
CMD ["run"]
