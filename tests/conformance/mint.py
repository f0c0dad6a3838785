#!/usr/bin/env python3
"""Mints a token with a vendor's own server SDK, for tests/it/conformance.rs.

Usage: mint.py VENDOR < inputs.json   (prints the token)
The inputs are the same the test gives tokengate: keys, ids and the user.
"""

import json
import sys
import time


def contactsmanager(i):
    from contactsmanager import ContactsManagerClient

    client = ContactsManagerClient(api_key=i["api_key"], api_secret=i["api_secret"], org_id=i["org_id"])
    return client.generate_token(i["user_id"], device_info=i["device_info"])["token"]


def twilio(i):
    from twilio.jwt.access_token import AccessToken
    from twilio.jwt.access_token.grants import ChatGrant

    token = AccessToken(i["account_sid"], i["api_key_sid"], i["api_key_secret"], identity=i["user_id"], ttl=3600)
    token.add_grant(ChatGrant(service_sid=i["service_sid"]))
    jwt = token.to_jwt()
    return jwt.decode() if isinstance(jwt, bytes) else jwt


def stream(i):
    from stream_chat import StreamChat

    now = int(time.time())
    client = StreamChat(api_key=i["api_key"], api_secret=i["api_secret"])
    # tokengate's profile gives the token a lifetime (24 h); the SDK takes one as exp/iat.
    return client.create_token(i["user_id"], exp=now + 86400, iat=now)


def livekit(i):
    from livekit import api

    grants = api.VideoGrants(room_join=True, room=i["room"])
    token = api.AccessToken(i["api_key"], i["api_secret"]).with_identity(i["user_id"]).with_name(i["name"])
    return token.with_grants(grants).to_jwt()


def livekit_verify(i):
    """Verifies tokengate's token with the SDK's own TokenVerifier; prints what it read."""
    from livekit import api

    claims = api.TokenVerifier(i["api_key"], i["api_secret"]).verify(i["token"])
    return json.dumps({"identity": claims.identity, "name": claims.name, "room": claims.video.room,
                       "room_join": claims.video.room_join})


def firebase(i):
    import firebase_admin
    from firebase_admin import auth, credentials

    app = firebase_admin.initialize_app(credentials.Certificate(i["service_account"]), name="conformance")
    token = auth.create_custom_token(i["user_id"], i["developer_claims"], app=app)
    return token.decode() if isinstance(token, bytes) else token


def firebase_verify(i):
    """Verifies a custom token with PyJWT against the service account's public key."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(i["service_account"]["private_key"].encode(), None).public_key()
    aud = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"
    return json.dumps(jwt.decode(i["token"], key, algorithms=["RS256"], audience=aud))


if __name__ == "__main__":
    vendor = sys.argv[1].replace("-", "_")
    print(globals()[vendor](json.load(sys.stdin)))
