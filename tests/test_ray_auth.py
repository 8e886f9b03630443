"""A Ray cluster that refuses the client for authentication says so (issue 25, item 9). The failures
are the exception chains Ray 2.60 raised against a `ray start --head` cluster with token
authentication (measured by hand: no token / RAY_AUTH_MODE unset, and RAY_AUTH_MODE=token without
the head's token); ray.init is replaced so that no cluster is needed."""
import pytest

ray = pytest.importorskip("ray")

from retrieval.scale import engine


def _chain(outer, inner):
    try:
        try:
            raise inner
        except Exception as cause:
            raise outer from cause
    except Exception as exc:
        return exc


RPC_TRACEBACK = ('Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n'
                 '  File "ray/_private/node.py", line 996, in _init_gcs_client\n'
                 'ray.exceptions.RpcError: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is '
                 'missing or incorrect\n')


def _connect_with(monkeypatch, failure):
    def init(**kwargs):
        raise failure

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(engine.EngineError) as info:
        with engine.ray_session("10.0.0.1:6391"):
            pass
    return str(info.value)


def test_a_missing_or_wrong_token_names_authentication(monkeypatch):
    failure = _chain(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6391"), RuntimeError(RPC_TRACEBACK))
    message = _connect_with(monkeypatch, failure)
    assert "authentication failed (Authentication token is missing or incorrect)" in message
    assert "RAY_AUTH_MODE=token" in message and "~/.ray/auth_token" in message and "RAY_AUTH_MODE=disabled" in message
    assert "cannot reach" not in message and "\n" not in message


def test_token_mode_without_a_token_names_authentication(monkeypatch):
    from ray.exceptions import AuthenticationError

    message = _connect_with(monkeypatch, AuthenticationError(
        "Token authentication is enabled but no authentication token was found"))
    assert "authentication failed (Token authentication is enabled but no authentication token was found)" in message


def test_an_unreachable_cluster_still_blames_the_network(monkeypatch):
    failure = _chain(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6391"),
                     RuntimeError("Failed to connect to GCS: Timed out while waiting for GCS to become available"))
    message = _connect_with(monkeypatch, failure)
    assert message.startswith("cannot reach the Ray cluster at '10.0.0.1:6391'") and "authentication" not in message
