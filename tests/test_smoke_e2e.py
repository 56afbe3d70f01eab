from gateway.demo.standin import StandIn
from tests.harness import RunningGateway, raw_request


def test_pending_invocation_is_cancelled_through_the_gateway(
    gateway: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending()
    response = gateway.cancel(invocation.upper())
    assert response.status_code == 202
    assert response.json() == {}
    assert standin.state_of(invocation) == "cancelled"
    records = gateway.wait_for_records(lambda r: len(r) >= 4)
    assert [r["event"] for r in records[:2]] == ["audit.chain", "audit.opened"]
    records = records[2:]
    assert [r["event"] for r in records] == ["cancel.attempt", "cancel.result"]
    assert records[1]["outcome"] == "cancelled"
    assert records[1]["invocation_id"] == invocation
    forwarded = standin.requests[-1]
    assert forwarded.target == f"/api/v1/invocations/{invocation}"


def test_both_content_length_and_transfer_encoding_is_400_and_closes(
    gateway: RunningGateway,
) -> None:
    response = raw_request(
        gateway.port,
        b"PUT /api/v1/invocations/3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert response.status == 400
    assert response.json()["error"] == "bad_request"
    assert response.closed
