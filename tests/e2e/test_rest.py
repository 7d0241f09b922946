"""Every REST route of a real server (auth on), over real HTTP, with its errors.

Dead letters are made for real: a WebSocket member that never acks, with a short ack timeout.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import schemathesis

from fleetchat.config import ChatSettings, QosSettings
from fleetchat.server.rest import ROUTES
from fleetchat.testing import assert_eventually
from fleetchat.types import Priority
from tests.e2e.conftest import RawAgent, RunningServer, StartServer


class Api:
    """REST calls as one agent, plus an admin and an agent token for the same server."""

    def __init__(self, server: RunningServer, agent: str, admin: str) -> None:
        self.server = server
        self.agent = agent
        self.admin = admin

    async def call(
        self, method: str, path: str, *, token: str | None = "agent", **kwargs: Any
    ) -> tuple[int, Any]:
        """``token`` is "agent", "admin", None (no header) or a literal token."""
        chosen = {"agent": self.agent, "admin": self.admin}.get(token or "", token)
        return await self.server.request(method, path, token=chosen, **kwargs)

    async def create(self, name: str, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/v1/channels", json={"name": name, **fields})
        assert status == 201, body
        result: dict[str, Any] = body
        return result

    async def publish(self, channel: str, body: Any, **fields: Any) -> dict[str, Any]:
        status, msg = await self.call(
            "POST", f"/v1/channels/{channel}/messages", json={"body": body, **fields}
        )
        assert status == 201, msg
        result: dict[str, Any] = msg
        return result


def assert_error(answer: tuple[int, Any], status: int, code: str) -> dict[str, Any]:
    """The answer is the error ``code`` with HTTP ``status``, in the documented shape."""
    got_status, body = answer
    assert isinstance(body, dict), (got_status, body)
    assert (got_status, body.get("error", {}).get("code")) == (status, code), body
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str)
    error: dict[str, Any] = body["error"]
    return error


def json_stream(obj: Any) -> dict[str, Any]:
    """Request arguments for a large JSON body (aiohttp warns about large bytes bodies)."""
    return {
        "data": io.BytesIO(json.dumps(obj).encode()),
        "headers": {"Content-Type": "application/json"},
    }


@pytest.fixture
async def api(server: RunningServer) -> Api:
    return Api(server, await server.token("alice"), await server.token("root", admin=True))


# -- public endpoints -------------------------------------------------------------------------


async def test_healthz_answers_ok_without_a_token(server: RunningServer) -> None:
    status, body = await server.request("GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok"


async def test_openapi_json_is_a_valid_openapi_3_1_document_of_every_route(
    server: RunningServer,
) -> None:
    status, doc = await server.request("GET", "/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the official 3.1 meta-schema
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


async def test_openapi_json_refs_all_resolve(server: RunningServer) -> None:
    _, doc = await server.request("GET", "/v1/openapi.json")
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        prefix, _, name = ref.rpartition("/")
        assert prefix == "#/components/schemas"
        assert name in schemas, ref


async def test_docs_page_is_html_listing_every_path(server: RunningServer) -> None:
    async with server.http.get(server.url + "/v1/docs") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        page = await r.text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    for route in ROUTES:
        assert route.path in page


# -- authentication and authorisation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/channels"),
        ("POST", "/v1/channels"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/metrics/delivery"),
        ("GET", "/v1/dlq"),
        ("DELETE", "/v1/dlq"),
    ],
)
async def test_a_call_without_a_token_is_unauthenticated(api: Api, method: str, path: str) -> None:
    assert_error(await api.call(method, path, token=None), 401, "unauthenticated")


async def test_a_call_with_an_unknown_token_is_unauthenticated(api: Api) -> None:
    answer = await api.call("GET", "/v1/channels", token="fct_not-a-token")
    assert_error(answer, 401, "unauthenticated")


async def test_an_agent_publishing_as_another_sender_is_forbidden(api: Api) -> None:
    await api.create("fleet")
    answer = await api.call(
        "POST", "/v1/channels/fleet/messages", json={"body": "hi", "sender": "bob"}
    )
    assert_error(answer, 403, "forbidden")
    assert api.server.hub.channels.get("fleet").last_seq == 0


async def test_an_admin_may_publish_as_another_sender(api: Api) -> None:
    await api.create("fleet")
    status, msg = await api.call(
        "POST", "/v1/channels/fleet/messages", token="admin", json={"body": 1, "sender": "bob"}
    )
    assert status == 201
    assert msg["sender"] == "bob"


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("DELETE", "/v1/channels/fleet", None),
        ("POST", "/v1/dlq/replay", {}),
        ("DELETE", "/v1/dlq", None),
    ],
)
async def test_admin_routes_are_forbidden_to_an_agent_token(
    api: Api, method: str, path: str, json: Any
) -> None:
    await api.create("fleet")
    assert_error(await api.call(method, path, json=json), 403, "forbidden")
    assert api.server.hub.channels.get("fleet").name == "fleet"


# -- channels ---------------------------------------------------------------------------------


async def test_create_channel_answers_201_with_the_channel(api: Api) -> None:
    channel = await api.create("fleet", type="broadcast", retention_count=10, announce=False)
    assert channel["name"] == "fleet"
    assert channel["type"] == "broadcast"
    assert channel["retention_count"] == 10
    assert channel["announce"] is False
    assert channel.get("last_seq", 0) == 0


async def test_create_an_existing_channel_is_a_conflict(api: Api) -> None:
    await api.create("fleet")
    answer = await api.call("POST", "/v1/channels", json={"name": "fleet"})
    assert assert_error(answer, 409, "channel_exists")["details"] == {"channel": "fleet"}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[]",
        b'{"name": 5}',
        b'{"name": "ok", "colour": "red"}',
        b'{"name": "ok", "type": "podcast"}',
        b'{"name": "ok", "retention_count": "many"}',
        b"",
    ],
    ids=[
        "not-json",
        "array",
        "name-not-a-string",
        "unknown-field",
        "bad-type",
        "bad-count",
        "empty",
    ],
)
async def test_create_channel_with_a_bad_body_is_invalid_input(api: Api, payload: bytes) -> None:
    answer = await api.call(
        "POST", "/v1/channels", data=payload, headers={"Content-Type": "application/json"}
    )
    assert_error(answer, 400, "invalid_input")
    assert [c.name for c in api.server.hub.channels.list()] == []


async def test_create_channel_with_a_bad_name_is_invalid_id(api: Api) -> None:
    assert_error(await api.call("POST", "/v1/channels", json={"name": "a b"}), 400, "invalid_id")


async def test_list_channels_hides_system_channels_unless_asked(api: Api) -> None:
    await api.create("beta")
    await api.create("alpha")
    status, body = await api.call("GET", "/v1/channels")
    assert status == 200
    assert [c["name"] for c in body["channels"]] == ["alpha", "beta"]
    _, body = await api.call("GET", "/v1/channels?include_system=true")
    assert "$dlq" in [c["name"] for c in body["channels"]]


async def test_get_channel_answers_the_channel_with_its_last_seq(api: Api) -> None:
    await api.create("fleet", announce=False)
    await api.publish("fleet", 1)
    status, channel = await api.call("GET", "/v1/channels/fleet")
    assert status == 200
    assert (channel["name"], channel["last_seq"]) == ("fleet", 1)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/channels/nowhere"),
        ("GET", "/v1/channels/nowhere/history"),
        ("GET", "/v1/channels/nowhere/members"),
        ("DELETE", "/v1/channels/nowhere/members/alice"),
    ],
)
async def test_an_unknown_channel_is_channel_not_found(api: Api, method: str, path: str) -> None:
    error = assert_error(await api.call(method, path), 404, "channel_not_found")
    assert error["details"] == {"channel": "nowhere"}


async def test_publish_to_an_unknown_channel_is_channel_not_found(api: Api) -> None:
    answer = await api.call("POST", "/v1/channels/nowhere/messages", json={"body": 1})
    assert_error(answer, 404, "channel_not_found")


async def test_an_admin_deletes_a_channel_and_its_history(api: Api) -> None:
    await api.create("fleet")
    await api.publish("fleet", 1)
    status, body = await api.call("DELETE", "/v1/channels/fleet", token="admin")
    assert (status, body) == (204, None)
    assert_error(await api.call("GET", "/v1/channels/fleet"), 404, "channel_not_found")
    assert_error(
        await api.call("DELETE", "/v1/channels/fleet", token="admin"), 404, "channel_not_found"
    )


async def test_the_dead_letter_channel_cannot_be_deleted(api: Api) -> None:
    assert_error(await api.call("DELETE", "/v1/channels/$dlq", token="admin"), 403, "forbidden")


# -- publish and history ----------------------------------------------------------------------


async def test_publish_answers_201_with_the_committed_message_from_the_tokens_agent(
    api: Api,
) -> None:
    await api.create("fleet")
    msg = await api.publish(
        "fleet", {"x": 1}, priority="high", kind="task", headers={"traceparent": "00-1"}
    )
    assert msg["sender"] == "alice"
    assert (msg["channel"], msg["seq"], msg["body"]) == ("fleet", 1, {"x": 1})
    assert (msg["priority"], msg["kind"]) == ("high", "task")
    assert msg["headers"] == {"traceparent": "00-1"}
    _, history = await api.call("GET", "/v1/channels/fleet/history")
    assert history["messages"] == [msg]


async def test_a_message_published_over_rest_reaches_a_websocket_member(
    api: Api, server: RunningServer
) -> None:
    member = await server.agent("bob")
    await member.subscribe("fleet")
    msg = await api.publish("fleet", "hello bob")
    [d] = await member.deliveries(1)
    assert (d.id, d.body, d.message["sender"]) == (msg["id"], "hello bob", "alice")


@pytest.mark.parametrize(
    "body",
    [
        {"body": 1, "priority": "urgent"},
        {"body": 1, "kind": "shout"},
        {"body": 1, "headers": {"a": 1}},
        {"body": 1, "expires_in": "soon"},
        {"body": 1, "extra": True},
    ],
    ids=["priority", "kind", "headers", "expires_in", "unknown-field"],
)
async def test_publish_with_a_bad_body_is_invalid_input(api: Api, body: dict[str, Any]) -> None:
    await api.create("fleet")
    assert_error(
        await api.call("POST", "/v1/channels/fleet/messages", json=body), 400, "invalid_input"
    )


async def test_publish_of_a_body_over_max_body_bytes_is_message_too_large(api: Api) -> None:
    await api.create("fleet")
    big = {"body": "x" * (api.server.hub.settings.chat.max_body_bytes + 1)}
    answer = await api.call("POST", "/v1/channels/fleet/messages", **json_stream(big))
    assert_error(answer, 413, "message_too_large")


async def test_a_request_body_over_the_frame_limit_is_a_json_message_too_large(
    api: Api,
) -> None:
    await api.create("fleet")
    big = {"body": "x" * (api.server.server.settings.max_frame_bytes + 1)}
    answer = await api.call("POST", "/v1/channels/fleet/messages", **json_stream(big))
    assert_error(answer, 413, "message_too_large")


async def test_history_selects_by_seq_range_and_limit(api: Api) -> None:
    await api.create("log", announce=False)
    for i in range(1, 7):
        await api.publish("log", i)

    async def seqs(query: str) -> list[int]:
        status, body = await api.call("GET", f"/v1/channels/log/history{query}")
        assert status == 200, body
        return [m["seq"] for m in body["messages"]]

    assert await seqs("") == [1, 2, 3, 4, 5, 6]
    assert await seqs("?start_seq=2&end_seq=4") == [2, 3, 4]
    assert await seqs("?start_seq=5") == [5, 6]
    assert await seqs("?end_seq=2") == [1, 2]
    assert await seqs("?start_seq=2&limit=2") == [2, 3]
    assert await seqs("?limit=2&tail=true") == [5, 6]
    assert await seqs("?limit=2&tail=false") == [1, 2]
    assert await seqs("?end_seq=4&limit=3&tail=1") == [2, 3, 4]
    assert await seqs("?tail=true") == [1, 2, 3, 4, 5, 6]


async def test_history_selects_by_time_range(api: Api) -> None:
    await api.create("log", announce=False)
    sent = [await api.publish("log", i) for i in range(4)]
    times = [m["created_at"] for m in sent]
    assert times == sorted(times)
    _, body = await api.call(
        "GET", "/v1/channels/log/history", params={"since": times[1], "until": times[2]}
    )
    assert [m["id"] for m in body["messages"]] == [sent[1]["id"], sent[2]["id"]]
    _, body = await api.call("GET", "/v1/channels/log/history", params={"since": times[3]})
    assert [m["id"] for m in body["messages"]] == [sent[3]["id"]]


@pytest.mark.parametrize(
    "query",
    [
        "start_seq=two",
        "limit=0",
        "limit=-3",
        "end_seq=-1",
        "since=nan",
        "until=later",
        "tail=maybe",
    ],
)
async def test_history_with_a_bad_query_is_invalid_input(api: Api, query: str) -> None:
    await api.create("log")
    answer = await api.call("GET", f"/v1/channels/log/history?{query}")
    assert_error(answer, 400, "invalid_input")


# -- members ----------------------------------------------------------------------------------


async def test_join_and_leave_change_the_member_list(api: Api) -> None:
    await api.create("fleet")
    status, body = await api.call("POST", "/v1/channels/fleet/members", json={"agent_id": "alice"})
    assert (status, body) == (200, {"members": ["alice"]})
    assert await api.call("GET", "/v1/channels/fleet/members") == (200, {"members": ["alice"]})
    status, body = await api.call("DELETE", "/v1/channels/fleet/members/alice")
    assert (status, body) == (200, {"members": []})


async def test_join_creates_a_missing_channel(api: Api) -> None:
    status, body = await api.call("POST", "/v1/channels/new/members", json={"agent_id": "alice"})
    assert (status, body) == (200, {"members": ["alice"]})


async def test_an_agent_may_not_join_or_remove_another_agent(api: Api) -> None:
    await api.create("fleet")
    await api.call("POST", "/v1/channels/fleet/members", token="admin", json={"agent_id": "bob"})
    answer = await api.call("POST", "/v1/channels/fleet/members", json={"agent_id": "carol"})
    assert_error(answer, 403, "forbidden")
    assert_error(await api.call("DELETE", "/v1/channels/fleet/members/bob"), 403, "forbidden")
    assert await api.call("GET", "/v1/channels/fleet/members") == (200, {"members": ["bob"]})


async def test_join_with_a_bad_body_is_invalid_input(api: Api) -> None:
    await api.create("fleet")
    answer = await api.call("POST", "/v1/channels/fleet/members", json={"agent": "alice"})
    assert_error(answer, 400, "invalid_input")


# -- agents -----------------------------------------------------------------------------------


async def test_agents_are_listed_and_found_once_registered_over_the_websocket(
    api: Api, server: RunningServer
) -> None:
    await server.agent("rover-1", capabilities={"lidar": 0.9, "arm": 0.2}, labels={"site": "a"})
    await server.agent("rover-2", capabilities={"lidar": 0.5})
    status, body = await api.call("GET", "/v1/agents")
    assert status == 200
    assert [a["id"] for a in body["agents"]] == ["rover-1", "rover-2"]
    status, one = await api.call("GET", "/v1/agents/rover-1")
    assert status == 200
    assert (one["capabilities"], one["labels"]) == ({"lidar": 0.9, "arm": 0.2}, {"site": "a"})
    _, available = await api.call("GET", "/v1/agents?status=available")
    assert [a["id"] for a in available["agents"]] == ["rover-1", "rover-2"]
    _, offline = await api.call("GET", "/v1/agents?status=offline")
    assert offline == {"agents": []}


async def test_agent_search_ranks_by_score_and_applies_min_confidence(
    api: Api, server: RunningServer
) -> None:
    await server.agent("rover-1", capabilities={"lidar": 0.9})
    await server.agent("rover-2", capabilities={"lidar": 0.6})
    status, body = await api.call(
        "POST", "/v1/agents/search", json={"required": {"lidar": 1.0}, "min_confidence": 0.5}
    )
    assert status == 200
    assert [(m["agent"]["id"], m["score"]) for m in body["matches"]] == [
        ("rover-1", pytest.approx(0.9)),
        ("rover-2", pytest.approx(0.6)),
    ]
    _, body = await api.call("POST", "/v1/agents/search", json={"required": {"lidar": 1.0}})
    assert [m["agent"]["id"] for m in body["matches"]] == ["rover-1"]  # default floor 0.8


async def test_an_unknown_agent_is_agent_not_found(api: Api) -> None:
    assert_error(await api.call("GET", "/v1/agents/ghost"), 404, "agent_not_found")


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/v1/agents?status=sleepy", None),
        ("POST", "/v1/agents/search", {"required": "lidar"}),
        ("POST", "/v1/agents/search", {"required": {"lidar": 1}, "limit": 0}),
        ("POST", "/v1/agents/search", {}),
    ],
    ids=["status", "required-not-a-map", "limit-zero", "required-missing"],
)
async def test_agent_queries_with_bad_input_are_invalid_input(
    api: Api, method: str, path: str, json: Any
) -> None:
    assert_error(await api.call(method, path, json=json), 400, "invalid_input")


# -- delivery metrics -------------------------------------------------------------------------


async def test_delivery_metrics_count_publishes_and_acked_deliveries(
    api: Api, server: RunningServer
) -> None:
    member = await server.agent("bob")
    await member.subscribe("fleet")
    await api.publish("fleet", 1, priority="high")
    await api.publish("fleet", 2)
    deliveries = await member.deliveries(2)
    await member.ack(deliveries[-1].tag)

    async def counted() -> bool:
        status, m = await api.call("GET", "/v1/metrics/delivery")
        assert status == 200
        return bool(m["delivered"] == 2 and m["delivered_by_priority"].get("high") == 1)

    await assert_eventually(counted)
    _, m = await api.call("GET", "/v1/metrics/delivery")
    assert m["published"] >= 2
    assert m["published_by_priority"]["high"] == 1
    assert (m["dead_lettered"], m["success_rate"]) == (0, 1.0)


# -- dead letters -----------------------------------------------------------------------------


@pytest.fixture
async def dead(start_server: StartServer) -> tuple[Api, RawAgent, dict[str, Any]]:
    """A server whose member ``bob`` never acked one message (2 attempts of 0.2 s): the API,
    bob's connection and the dead message."""
    server = await start_server(
        chat=ChatSettings(qos={p: QosSettings(ack_timeout=0.2, max_attempts=2) for p in Priority})
    )
    api = Api(server, await server.token("alice"), await server.token("root", admin=True))
    bob = await server.agent("bob")
    await bob.subscribe("ops")
    msg = await api.publish("ops", {"task": "inspect"}, priority="high")
    first, second = await bob.deliveries(2)
    assert (first.id, first.attempt, second.id, second.attempt) == (msg["id"], 1, msg["id"], 2)

    async def listed() -> bool:
        _, body = await api.call("GET", "/v1/dlq")
        return len(body["dead_letters"]) == 1

    await assert_eventually(listed)
    return api, bob, msg


async def test_dlq_lists_a_message_a_member_never_acked(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, msg = dead
    status, body = await api.call("GET", "/v1/dlq")
    assert status == 200
    [entry] = body["dead_letters"]
    letter = entry["letter"]
    assert (letter["member"], letter["reason"], letter["attempts"]) == ("bob", "ack_timeout", 2)
    assert letter["message"] == msg
    _, metrics = await api.call("GET", "/v1/metrics/delivery")
    assert metrics["dead_lettered"] == 1


async def test_dlq_list_with_a_bad_limit_is_invalid_input(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, _ = dead
    assert_error(await api.call("GET", "/v1/dlq?limit=-1"), 400, "invalid_input")
    assert_error(await api.call("GET", "/v1/dlq?limit=many"), 400, "invalid_input")
    _, body = await api.call("GET", "/v1/dlq?limit=1")
    assert len(body["dead_letters"]) == 1


async def test_dlq_list_with_limit_zero_is_invalid_input(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, _ = dead
    assert_error(await api.call("GET", "/v1/dlq?limit=0"), 400, "invalid_input")


async def test_dlq_replay_delivers_the_message_again_to_the_members_inbox(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, bob, msg = dead
    status, body = await api.call("POST", "/v1/dlq/replay", token="admin", json={})
    assert (status, body) == (200, {"count": 1})
    [again] = await bob.deliveries(1)
    assert again.message["channel"] == "@bob"
    assert (again.body, again.message["priority"]) == ({"task": "inspect"}, "high")
    assert again.message["headers"] == {"replay-of": msg["id"], "replay-channel": "ops"}
    assert again.attempt == 1
    await bob.ack(again.tag)


async def test_dlq_replay_of_chosen_seqs_only_replays_those(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, _ = dead
    _, body = await api.call("GET", "/v1/dlq")
    seq = body["dead_letters"][0]["seq"]
    answer = await api.call("POST", "/v1/dlq/replay", token="admin", json={"seqs": [seq + 100]})
    assert answer == (200, {"count": 0})
    answer = await api.call("POST", "/v1/dlq/replay", token="admin", json={"seqs": [seq]})
    assert answer == (200, {"count": 1})


async def test_dlq_replay_with_a_bad_body_is_invalid_input(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, _ = dead
    answer = await api.call("POST", "/v1/dlq/replay", token="admin", json={"seqs": "all"})
    assert_error(answer, 400, "invalid_input")


async def test_dlq_purge_empties_the_dead_letter_channel(
    dead: tuple[Api, RawAgent, dict[str, Any]],
) -> None:
    api, _, _ = dead
    assert await api.call("DELETE", "/v1/dlq", token="admin") == (200, {"count": 1})
    assert await api.call("GET", "/v1/dlq") == (200, {"dead_letters": []})
    assert await api.call("POST", "/v1/dlq/replay", token="admin", json={}) == (
        200,
        {"count": 0},
    )
