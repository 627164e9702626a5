curl -X POST http://127.0.0.1:8080/v1/notifications \
  -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
  -H 'Idempotency-Key: order-42-shipped' \
  -d '{"to": {"users": ["demo-user"]}, "category": "orders", "title": "Your order shipped"}'
# 202 {"id":"01M7...","recipients":1,"status":"accepted"}
