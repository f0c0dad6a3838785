"""Baseline: the ContactsManager tutorial's token endpoint as people deploy it.

Flask + PyJWT, run by benches/load.py under gunicorn with 2 workers. Same claims as
config/contactsmanager.yaml: org_id, api_key, user_id, device_info, jti, iat, exp (+24 h).
"""

import os
import time
import uuid

import jwt
from flask import Flask, jsonify, request

app = Flask(__name__)
API_KEY = os.environ.get("CM_API_KEY", "cm-key")
API_SECRET = os.environ.get("CM_API_SECRET", "cm-secret-for-the-benchmark")
ORG_ID = os.environ.get("CM_ORGANIZATION_ID", "org-1")


@app.route("/generate-token", methods=["POST"])
def token_endpoint():
    try:
        payload = request.get_json(force=True, silent=True) or {}
        if not payload.get("userId"):
            raise ValueError("Missing required field: userId")
        now = int(time.time())
        claims = {
            "org_id": ORG_ID,
            "api_key": API_KEY,
            "user_id": payload["userId"],
            "device_info": payload.get("deviceInfo", {}),
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 86400,
        }
        token = jwt.encode(claims, API_SECRET, algorithm="HS256")
        return jsonify({
            "token": token,
            "expiresAt": claims["exp"],
            "message": f"Token generated for user {payload['userId']}",
            "success": True,
        }), 200
    except Exception as e:  # the tutorial's shape
        return jsonify({"message": f"Error: {e}", "success": False}), 400
