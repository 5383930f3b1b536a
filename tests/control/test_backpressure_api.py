"""The API answers a full queue with 429 + Retry-After and a broker outage with 503 + Retry-After."""
import kombu.exceptions

from apps.control.api_errors import json_exception_handler
from apps.core.amqp import QueueFull


def test_a_full_queue_is_429_with_retry_after():
    response = json_exception_handler(QueueFull("RabbitMQ refused task x[1]: queue mail is full; retry later"), {})
    assert response.status_code == 429
    assert response["Retry-After"] == str(QueueFull.retry_after_seconds)
    assert response.data == {"detail": "RabbitMQ refused task x[1]: queue mail is full; retry later", "code": "queue_full"}


def test_an_unreachable_broker_is_503_with_retry_after():
    response = json_exception_handler(kombu.exceptions.OperationalError("[Errno 111] Connection refused"), {})
    assert response.status_code == 503 and response["Retry-After"] == "10"
    assert "RabbitMQ is not reachable" in response.data["detail"]
