# One run per container start: discover the OpenAI organization, push to Veza, exit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY veza_openai.py .
RUN groupadd --gid 10001 connector \
    && useradd --uid 10001 --gid 10001 --create-home connector \
    && chmod 0755 /app/veza_openai.py
# Numeric, so Kubernetes' runAsNonRoot can verify it; --save_json writes below the home directory.
USER 10001:10001
WORKDIR /home/connector

ENTRYPOINT ["python", "/app/veza_openai.py"]
