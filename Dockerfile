FROM python:3.11-slim
# The server profile: DEBUG off, every secret and host name from the environment
# (demo_shop/settings_production.py says which; it refuses to start without them).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=demo_shop.settings_production
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY sagaflow ./sagaflow
RUN pip install --no-cache-dir '.[demo]' gunicorn
COPY . .
EXPOSE 8000
# 0.0.0.0 inside the container; publish the port on loopback or behind the TLS proxy.
# Request errors and the access log go to stderr/stdout (settings LOGGING).
CMD ["gunicorn", "demo_shop.wsgi:application", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
