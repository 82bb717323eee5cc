// The model picker: which indexed model answers the page's searches (GET /api/models).
// Loaded before app.js, which sends pickedModel() with each search and shows the model that
// answered (the X-Clipdb-Model header). Shown only when more than one model is indexed.
"use strict";

const modelSelect = document.getElementById("model-select");

// The picked model's name, or "" for the one the server serves (no parameter sent).
function pickedModel() {
  const option = modelSelect.selectedOptions[0];
  return option && !option.dataset.serving ? option.value : "";
}

// "clipdb-tiny/none" for the status line: the name the API and `clipdb models` use.
function answeredBy(response) {
  const name = response.headers.get("X-Clipdb-Model");
  return name ? ` · model ${name}` : "";
}

fetch("/api/models")
  .then((response) => (response.ok ? response.json() : []))
  .then((models) => {
    for (const model of models) {
      const option = document.createElement("option");
      option.value = model.name;
      option.textContent = `${model.name}, ${model.images} images${model.default ? " (default)" : ""}`;
      if (model.serving) {
        option.dataset.serving = "1";
        option.selected = true;
      }
      modelSelect.append(option);
    }
    modelSelect.hidden = models.length < 2;
  })
  .catch(() => {});
