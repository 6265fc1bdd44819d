"""No password or token in any message, repr or traceback of a store spec or a MilvusStore.

Secrets are pasted wherever a user might paste them (the userinfo, a query value, a query name,
a fragment) into specs that are otherwise right or wrong in every way checked (scheme, IPv6,
port); the secret holds the characters that move URI parts around (``/ ? # @ :``).
"""

from __future__ import annotations

import string
import traceback
import uuid
from collections.abc import Callable

import pytest

from m3rag.errors import CollectionNotFoundError, RemoteStoreError
from m3rag.index.milvus import MilvusStore
from m3rag.index.uri import parse_milvus_uri, redact_uri

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
pytest.importorskip("pymilvus")

MARK = "SECRET"
_piece = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:/?#[]@ ", max_size=8
)
secrets = st.builds(lambda a, b: f"{a}{MARK}{b}", _piece, _piece)

SPECS: list[Callable[[str], str]] = [
    lambda s: f"milvus://user:{s}@h:19530/docs",
    lambda s: f"milvuss://user:{s}@h:19530/docs",
    lambda s: f"MILVUS+HTTPS://{s}@h/docs",
    lambda s: f"http://root:{s}@h:19530/docs",
    lambda s: f"user:{s}@h:19530/docs",
    lambda s: f"milvus://u:{s}/x@h/docs",
    lambda s: f"milvus://h:19530/docs?token={s}",
    lambda s: f"milvus://h:19530/?token={s}",
    lambda s: f"milvus://h:19530/docs?{s}",
    lambda s: f"milvus://h:19530/docs?db=x&password={s}",
    lambda s: f"milvus://h:19530/docs#{s}",
    lambda s: f"milvus://[::1]:19530/docs?token={s}",
    lambda s: f"milvus://[::1/docs?token={s}",
    lambda s: f"milvus://h:0/docs?token={s}",
    lambda s: f"milvus://h:notaport/docs?token={s}",
    lambda s: f"milvus://h:99999/a/b?token={s}",
]


def _clean(text: str, secret: str) -> None:
    assert secret not in text and MARK not in text, text


def _everything(exc: BaseException) -> str:
    """What a user can see of an error: its text, repr and the full traceback (``--debug``)."""
    return f"{exc} {exc!r} " + "".join(traceback.format_exception(exc))


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(st.sampled_from(range(len(SPECS))), secrets)
def test_specs_never_show_the_secret(which: int, secret: str) -> None:
    spec = SPECS[which](secret)
    _clean(redact_uri(spec), secret)
    try:
        server, name, _ = parse_milvus_uri(spec)
    except ValueError as exc:
        _clean(_everything(exc), secret)
    else:  # only "?<secret>" can parse, where the "secret" spells a ?db= parameter
        assert "=" in secret and which == SPECS.index(SPECS[8])
        _clean(server + name, secret)


def test_spec_errors_are_clear() -> None:
    cases = {
        "milvus://[::1]:19530/docs": "IPv6",
        "milvus://h:0/docs": "1..65535",
        "milvus://h:notaport/docs": "1..65535",
        "milvus://h:70000/docs": "1..65535",
        "milvus://h:/docs": "1..65535",
        "milvus://[::1/docs": "not a valid URI",
        "milvuss://h:1/docs": "not a milvus:// URI",
        "milvus://h:1/docs#x": "'#'",
        "milvus://h:1/docs?token=t": "M3RAG_MILVUS_TOKEN",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            parse_milvus_uri(spec)
    assert parse_milvus_uri("milvus://h:1/docs?db=") == ("http://h:1", "docs", None)
    assert redact_uri("milvus://u:p@h:1/x?db=a&token=b#c") == "milvus://***@h:1/x?db=***&***#***"


def test_store_uri_credentials_never_shown(milvus_lite_uri: str) -> None:
    host = milvus_lite_uri.removeprefix("http://")

    @hypothesis.settings(max_examples=20, deadline=None, database=None)
    @hypothesis.given(secrets, st.booleans())
    def check(secret: str, as_token: bool) -> None:
        uri = milvus_lite_uri if as_token else f"http://root:{secret}@{host}"
        token = secret if as_token else None
        try:
            store = MilvusStore(uri, f"nope_{uuid.uuid4().hex[:8]}", token=token, timeout=5)
        except (CollectionNotFoundError, ValueError, RemoteStoreError) as exc:
            _clean(_everything(exc), secret)
        else:  # pragma: no cover - the collection does not exist
            store.close()
            raise AssertionError("opened a collection that does not exist")
        try:
            made = MilvusStore(
                uri, f"s_{uuid.uuid4().hex[:8]}", create=True, token=token, heads=["dense"], dim=2
            )
        except (ValueError, RemoteStoreError) as exc:  # a secret that breaks the URI's form
            _clean(_everything(exc), secret)
            return
        try:
            _clean(repr(made) + made.uri, secret)
        finally:
            made.drop()

    check()


def test_unreachable_server_errors_never_show_credentials() -> None:
    forms = [
        "http://127.0.0.1:1",  # the secret is the token
        "http://root:{s}@127.0.0.1:1",
        "root:{s}@127.0.0.1:1",  # no scheme: pymilvus quotes the whole URI in its error
    ]

    @hypothesis.settings(max_examples=12, deadline=None, database=None)
    @hypothesis.given(st.sampled_from(forms), secrets)
    def check(form: str, secret: str) -> None:
        uri = form.format(s=secret)
        token = secret if "{s}" not in form else None
        with pytest.raises((RemoteStoreError, ValueError)) as info:
            MilvusStore(uri, "x", token=token, timeout=1)
        _clean(_everything(info.value), secret)

    check()
