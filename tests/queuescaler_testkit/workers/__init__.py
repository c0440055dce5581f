"""The real workers the pod runner starts: a pika consumer and a Celery app (is_prime)."""
