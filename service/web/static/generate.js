// Generate: upload the speech and a template (or pick a cached avatar), choose options,
// submit. Files go to POST /v1/uploads first (with a progress bar), then the job names
// them by upload id: the template becomes an avatar the next job can pick.

import { api, upload } from "./api.js";
import { bytes, clear, h, seconds, showError } from "./dom.js";

export const template = "generate";
const MAIN_OPTIONS = new Set(["generator"]);

export function render(root) {
  const form = root.querySelector("#generate-form");
  const errorBox = root.querySelector("#generate-error");
  const fail = (error) => showError(errorBox, error);
  loadOptions(root).catch(fail);
  loadAvatars(root).catch(fail);
  form.elements.video.addEventListener("change", () => {
    for (const radio of root.querySelectorAll("input[name=avatar]")) radio.checked = false;
  });
  form.addEventListener("change", (event) => {
    if (event.target.name === "avatar") form.elements.video.value = "";
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(root).catch(fail);
  });
}

async function loadOptions(root) {
  const { options, limits } = await api("/v1/options");
  for (const option of options) {
    const target = root.querySelector(MAIN_OPTIONS.has(option.name) ? "#main-options" : "#more-options");
    target.append(optionField(option));
  }
  root.querySelector("#limits").textContent =
    `Limits on this server: files up to ${bytes(limits.max_upload_bytes)}, audio up to ` +
    `${seconds(limits.max_audio_seconds)}, template video up to ${seconds(limits.max_video_seconds)}.`;
}

function optionField(option) {
  const shown = option.default === null ? "automatic" : String(option.default);
  let control;
  if (option.choices || option.type === "bool") {
    const choices = option.choices || ["true", "false"];
    control = h("select", { name: option.name },
      h("option", { value: "", text: `server default (${shown})` }),
      choices.map((choice) => h("option", { value: choice, text: choice })));
  } else {
    const number = option.type === "int" || option.type === "float";
    control = h("input", {
      name: option.name,
      type: number ? "number" : "text",
      step: option.type === "int" ? "1" : number ? "any" : null,
      placeholder: `default: ${shown}`,
    });
  }
  return h("label", { class: "option" }, h("span", { class: "name", text: option.name.replaceAll("_", " ") }),
    control, h("small", { class: "muted", text: option.help }));
}

async function loadAvatars(root) {
  const box = root.querySelector("#avatars");
  const { items, kept_seconds: kept } = await api("/v1/avatars");
  if (!items.length) {
    clear(box, h("p", { class: "muted", text: "No avatars yet: a template you upload is offered here next time." }));
    return;
  }
  clear(box, items.map(avatarCard), h("p", { class: "muted small",
    text: `An avatar unused for ${seconds(kept)} is removed.` }));
}

function avatarCard(avatar) {
  const about = [];
  if (avatar.error) about.push(h("span", { class: "error", text: avatar.error }));
  else {
    const size = avatar.width ? `${avatar.width}×${avatar.height}` : "";
    about.push(avatar.still ? `still ${size}` : `${seconds(avatar.duration)} · ${size}`);
    about.push(h("br"));
    about.push(avatar.analysed
      ? h("span", { class: avatar.face_frames ? "ok" : "error",
          text: `face in ${avatar.face_frames} of ${avatar.frames} frames` })
      : h("span", { class: "muted", text: "not analysed yet" }));
  }
  const unusable = Boolean(avatar.error) || (avatar.analysed && !avatar.face_frames);
  return h("label", { class: unusable ? "avatar unusable" : "avatar", title: avatar.filename },
    h("input", { type: "radio", name: "avatar", value: avatar.upload_id, disabled: unusable }),
    avatar.thumbnail ? h("img", { src: avatar.thumbnail, alt: "" }) : h("div", { class: "no-thumb" }),
    h("span", { class: "avatar-name", text: avatar.filename }),
    h("span", { class: "avatar-about" }, about));
}

function progressTo(root, kind) {
  const box = root.querySelector(`.upload-progress[data-for="${kind}"]`);
  const bar = box.querySelector("progress");
  const text = box.querySelector("span");
  box.hidden = false;
  return (loaded, total) => {
    bar.value = total ? (100 * loaded) / total : 0;
    text.textContent = `${bytes(loaded)} of ${bytes(total)}`;
  };
}

async function submit(root) {
  const form = root.querySelector("#generate-form");
  const button = root.querySelector("#submit");
  const status = root.querySelector("#submit-status");
  const audio = form.elements.audio.files[0];
  const video = form.elements.video.files[0];
  const avatar = root.querySelector("input[name=avatar]:checked");
  showError(root.querySelector("#generate-error"), null);
  if (!audio) throw new Error("choose an audio file (the speech to lip-sync)");
  if (!video && !avatar) throw new Error("choose a template video or still, or pick an avatar");
  button.disabled = true;
  try {
    status.textContent = "Uploading the audio…";
    const audioUpload = await upload("/v1/uploads", "file", audio, progressTo(root, "audio"));
    let videoId = avatar ? avatar.value : null;
    if (video) {
      status.textContent = "Uploading the template…";
      videoId = (await upload("/v1/uploads", "file", video, progressTo(root, "video"))).id;
    }
    status.textContent = "Submitting…";
    const fields = new FormData();
    fields.append("audio_upload_id", audioUpload.id);
    fields.append("video_upload_id", videoId);
    for (const control of root.querySelectorAll(".option select, .option input")) {
      if (control.value !== "") fields.append(control.name, control.value);
    }
    const job = await api("/v1/generations", { method: "POST", form: fields });
    location.hash = `#job/${job.id}`;
  } finally {
    button.disabled = false;
    status.textContent = "";
  }
}
