// The API's reference, drawn from the server's own OpenAPI description: nothing loaded from elsewhere, so it
// works offline (FastAPI's Swagger page loads its code from a CDN). One section per endpoint: what it does,
// the fields it takes, an example with curl.
"use strict";

const el = (tag, text, className) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
};

function fieldsTable(schema) {
  const table = el("table");
  const head = table.insertRow();
  ["field", "type", "meaning"].forEach((name) => head.appendChild(el("th", name)));
  for (const [name, field] of Object.entries(schema.properties || {})) {
    const row = table.insertRow();
    const required = (schema.required || []).includes(name) ? " (required)" : "";
    row.appendChild(el("td", name + required, "name"));
    row.appendChild(el("td", field.format === "binary" ? "file" : field.type || ""));
    row.appendChild(el("td", field.description || ""));
  }
  return table;
}

function endpoint(path, method, operation) {
  const section = el("section", undefined, "endpoint");
  section.appendChild(el("h2", `${method.toUpperCase()} ${path}`));
  section.appendChild(el("p", operation.description || operation.summary || ""));
  const form = operation.requestBody?.content?.["multipart/form-data"]?.schema;
  if (form) {
    section.appendChild(el("h3", "multipart/form-data fields"));
    section.appendChild(fieldsTable(form));
  }
  const example = form ? `curl -F image=@photo.jpg -F beam=3 ${location.origin}${path}` : `curl ${location.origin}${path}`;
  section.appendChild(el("pre", example));
  return section;
}

async function main() {
  const api = document.getElementById("api");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    api.replaceChildren(el("p", spec.info.description.split("\n\n")[0]));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, operation] of Object.entries(methods)) api.appendChild(endpoint(path, method, operation));
    }
  } catch (error) {
    api.replaceChildren(el("p", `could not read /openapi.json: ${error.message}`));
  }
}
main();
