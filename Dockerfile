# One run per container start: discover the OpenAI organization, push to Veza, exit.
# Both pins are refreshed together; see README.md, "Reproducible builds".
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every package of the dependency tree, pinned with its hashes: two builds install the same files.
COPY requirements.lock .
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY veza_openai.py .
RUN groupadd --gid 10001 connector \
    && useradd --uid 10001 --gid 10001 --create-home connector \
    && chmod 0755 /app/veza_openai.py
# Numeric, so Kubernetes' runAsNonRoot can verify it; --save_json writes below the home directory.
USER 10001:10001
WORKDIR /home/connector

ENTRYPOINT ["python", "/app/veza_openai.py"]
