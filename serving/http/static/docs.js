/* Swagger UI for this server's /openapi.json (files served locally; see serving/web.py). */
(function () {
  "use strict";
  window.ui = window.SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
})();
