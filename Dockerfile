# The webhook image; the same image runs `gpu-webhook validate-driver` in the init container.
#
# Hermetic: the project and its dependencies are installed from wheels built beforehand on the
# host into dist/wheels/ (scripts/build-image.sh does it, for CPython 3.11 on glibc <= 2.36), with
# no index access inside the build. Build it without Docker with `scripts/build-image.sh`
# (docs/image.md), or with any builder:
#   buildah bud --isolation chroot -t airflow-gpu-webhook .      (after the wheels step)
#
# BASE is a pinned Debian 12 (bookworm) Python 3.11 image. Where it cannot be pulled, a local
# stand-in of the same distribution works (--build-arg BASE=...): a debootstrapped bookworm with
# python3 and python3-venv, as scripts/build-image.sh makes it. Both stages use BASE, so the
# venv's interpreter link (/usr/local/bin/python3 or /usr/bin/python3) exists in the final stage.
ARG BASE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY dist/wheels/ /wheels/
RUN python3 -m venv /opt/gpu-webhook \
 && /opt/gpu-webhook/bin/pip install --no-index --find-links /wheels --no-compile airflow-gpu-webhook \
 && /opt/gpu-webhook/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && /opt/gpu-webhook/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/gpu-webhook/lib

FROM ${BASE}
# A named user for the numeric id (-l: no lastlog/faillog entries, -M: no home directory).
RUN groupadd --gid 10001 gpu-webhook \
 && useradd --uid 10001 --gid 10001 -l -M --home-dir /nonexistent --shell /usr/sbin/nologin gpu-webhook
COPY --from=build /opt/gpu-webhook /opt/gpu-webhook
ENV PATH=/opt/gpu-webhook/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # The validator needs NVML (utility) and libcuda (compute) mounted by the container toolkit.
    # Set here, in the image, because the webhook refuses this variable in pod specs.
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="airflow-gpu-webhook" \
      org.opencontainers.image.description="Admission webhook for Airflow GPU pods; also the driver-validation init container" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["gpu-webhook"]
CMD ["--help"]
