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
RUN useradd --create-home --uid 10001 connector && chmod 0755 /app/veza_openai.py
USER connector
WORKDIR /home/connector

ENTRYPOINT ["python", "/app/veza_openai.py"]
