-- wrk: POST a ContactsManager-style body.
wrk.method = "POST"
wrk.body = '{"userId": "user-123", "deviceInfo": {"device_name": "iPhone 15", "os_version": "iOS 17.5"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Cookie"] = "session=bench-user"
