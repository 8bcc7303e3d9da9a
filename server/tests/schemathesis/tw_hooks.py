"""Schemathesis hooks for tilewarm-server (loaded by server/tests/schemathesis.sh).

The spec's `Tile` pattern allows `z/x/y` with any x and y of up to 8 digits; the protocol
also needs x, y < 2^z, which JSON Schema cannot say. Without this hook most generated
"valid" requests hold a tile that does not exist and are rightly refused with a 400, and
positive_data_acceptance reports them. The hook wraps x and y of every well-formed tile
into range, so schema-valid bodies are also protocol-valid; bodies that break the schema
in any other way (negative cases) stay invalid: a string that does not match the pattern
is left as it is. Path parameters of GET /v1/tiles/{z}/{x}/{y} are wrapped the same way.

Likewise the spec's `Id` says `maxLength: 256` characters where the protocol allows 256
UTF-8 bytes (JSON Schema counts characters); a schema-valid id over 256 bytes is cut to
256 bytes at a character boundary. Longer (schema-invalid) ids are left alone.

And schemathesis makes a bearer credential of any header string, the empty one included:
`Authorization: Bearer ` carries no token, which RFC 6750 (a token is one or more
characters) and the server answer as a malformed request (400 `invalid_request`, documented),
not as a credential to check. Such a header gets a token that is there and does not verify
(`x`: 401, as for any other bad token).
"""

import re

import schemathesis

TILE = re.compile(r"^(?:[0-9]|1[0-9]|2[0-4])/[0-9]{1,8}/[0-9]{1,8}$")


def existing(tile):
    if not isinstance(tile, str) or not TILE.match(tile):
        return tile
    z, x, y = (int(p) for p in tile.split("/"))
    n = 1 << z
    return f"{z}/{x % n}/{y % n}"


def within_bytes(id_):
    if not isinstance(id_, str) or len(id_) > 256:
        return id_
    data = id_.encode("utf-8", "surrogatepass")
    if len(data) <= 256:
        return id_
    return data[:256].decode("utf-8", "ignore") or id_


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if isinstance(body.get("tiles"), list):
        body["tiles"] = [existing(t) for t in body["tiles"]]
    if isinstance(body.get("ids"), list):
        body["ids"] = [within_bytes(i) for i in body["ids"]]
    return body


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    """GET /v1/tiles/{z}/{x}/{y}: x and y wrapped into range as for tiles in bodies."""
    if not isinstance(path_parameters, dict):
        return path_parameters
    z, x, y = (path_parameters.get(k) for k in ("z", "x", "y"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (z, x, y)):
        return path_parameters
    if not 0 <= z <= 24 or x < 0 or y < 0:
        return path_parameters
    n = 1 << z
    return {**path_parameters, "x": x % n, "y": y % n}


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """`Bearer` with no token (empty or spaces) given one that does not verify, just before
    each call, whatever the phase or the auth provider that set it."""
    headers = case.headers  # a case-insensitive mapping, not a dict
    if headers is None:
        return
    for name, value in list(headers.items()):
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and not token.strip():
                headers[name] = "Bearer x"
