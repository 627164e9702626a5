curl http://127.0.0.1:8080/v1/me/notifications -H "Authorization: Bearer $USER_TOKEN"
curl http://127.0.0.1:8080/v1/me/counts -H "Authorization: Bearer $USER_TOKEN"
