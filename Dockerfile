FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY sagaflow ./sagaflow
RUN pip install --no-cache-dir '.[demo]' gunicorn
COPY . .
EXPOSE 8000
CMD ["gunicorn", "demo_shop.wsgi:application", "--bind", "0.0.0.0:8000"]
