# The webhook image; the same image runs `gpu-webhook validate-driver` in the init container.
#
# Hermetic: the project and its dependencies are installed from wheels built beforehand on the
# host (`pip wheel . -w dist/wheels`), with no index access inside the build. Build without
# Docker, as this project does it: see docs in README ("Container image").
#
# BASE is a pinned Debian 12 (bookworm) Python image; override it with a local stand-in of the
# same distribution when the public one cannot be pulled (--build-arg BASE=...).
ARG BASE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${BASE} AS build
COPY dist/wheels/ /wheels/
RUN python3 -m venv /opt/gpu-webhook \
 && /opt/gpu-webhook/bin/pip install --no-index --find-links /wheels --no-compile airflow-gpu-webhook \
 && /opt/gpu-webhook/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && /opt/gpu-webhook/bin/python -m compileall -q /opt/gpu-webhook/lib

FROM ${BASE}
COPY --from=build /opt/gpu-webhook /opt/gpu-webhook
ENV PATH=/opt/gpu-webhook/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # The validator needs NVML (utility) and libcuda (compute) mounted by the container toolkit.
    # Set here, in the image, because the webhook refuses this variable in pod specs.
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["gpu-webhook"]
CMD ["--help"]
