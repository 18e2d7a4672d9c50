// The native API, as the page uses it: JSON in and out, the API key in its header (never
// in a URL), errors as the message and hint the server sent.

const body = document.body;
const KEY_HEADER = body.dataset.keyHeader || "X-API-Key";
const AUTH = body.dataset.auth === "on";
const STORE = "heygem-api-key"; // sessionStorage: this tab only, gone when it closes

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "Error";
    this.hint = error.hint || null;
    this.cause = error.cause || null;
  }
  // What a person reads: the message, then what to do.
  get text() {
    return this.hint ? `${this.message} (what to do: ${this.hint})` : this.message;
  }
}

export function authRequired() {
  return AUTH;
}

export function hasKey() {
  return Boolean(sessionStorage.getItem(STORE));
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(STORE);
  return key ? { ...extra, [KEY_HEADER]: key } : extra;
}

// --- the key prompt ----------------------------------------------------------------------
let asking = null; // one prompt for every request that needs the key

export function askForKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const why = document.getElementById("key-reason");
  why.textContent = reason || "";
  why.hidden = !reason;
  input.value = "";
  asking = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(STORE, key);
      dialog.close();
      asking = null;
      resolve();
    };
  });
  dialog.oncancel = (event) => event.preventDefault(); // Escape: the key is still needed
  dialog.showModal();
  input.focus();
  return asking;
}

export function forgetKey() {
  sessionStorage.removeItem(STORE);
}

// --- requests ----------------------------------------------------------------------------
async function errorOf(response) {
  let error = { message: `HTTP ${response.status} ${response.statusText}` };
  try {
    const data = await response.json();
    if (data && data.error) error = data.error;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, error);
}

// fetch() with the key; a 401 asks for a (new) key and tries once more.
export async function request(path, { method = "GET", form = null, json = null } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
    if (form) init.body = form;
    if (json) init.body = JSON.stringify(json);
    const response = await fetch(path, init);
    if (response.status === 401 && AUTH && attempt < 3) {
      const error = await errorOf(response);
      const hadKey = hasKey();
      forgetKey();
      await askForKey(hadKey ? `That key was not accepted: ${error.message}` : "");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJson(path, options) {
  const response = await request(path, options);
  return { status: response.status, data: response.status === 204 ? null : await response.json() };
}

export async function api(path, options) {
  return (await getJson(path, options)).data;
}

// POST a file as multipart with upload progress (fetch() cannot report it; XHR can).
export function upload(path, field, file, onProgress) {
  const send = () =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
      xhr.responseType = "json";
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      };
      xhr.onload = () => {
        const data = xhr.response || {};
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new ApiError(xhr.status, data.error || { message: `HTTP ${xhr.status}` }));
      };
      xhr.onerror = () =>
        reject(new ApiError(0, { message: `the upload of ${file.name} was interrupted`,
                                 hint: "check the connection and try again" }));
      const form = new FormData();
      form.append(field, file, file.name);
      xhr.send(form);
    });
  return (async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await send();
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 401 || !AUTH || attempt >= 3) throw error;
        const hadKey = hasKey();
        forgetKey();
        await askForKey(hadKey ? `That key was not accepted: ${error.message}` : "");
      }
    }
  })();
}
