// The API reference: Swagger UI over this server's /openapi.json. Everything it
// loads is served by this server (no validator badge, no fonts from elsewhere).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  tryItOutEnabled: false,
  persistAuthorization: false,
});
