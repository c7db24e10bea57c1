"use strict";
// The page: one chosen or dropped photo, two requests (the face; the whole photo), the results
// shown as they come with their download links. Relative URLs, no outside assets.

const fileInput = document.getElementById("file");
const drop = document.getElementById("drop");
const status = document.getElementById("status");
const photo = document.getElementById("photo");
const outputs = {
  face: { img: document.getElementById("face"), link: document.getElementById("face-download"), whole: false },
  whole: { img: document.getElementById("whole"), link: document.getElementById("whole-download"), whole: true },
};
let urls = [];
let run = 0;

function setStatus(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  urls.push(url);
  return url;
}

async function cartoonize(file, out, thisRun) {
  out.img.dataset.state = "pending";
  out.img.removeAttribute("src");
  out.link.removeAttribute("href");
  out.link.setAttribute("aria-disabled", "true");
  const form = new FormData();
  form.append("file", file);
  form.append("whole_photo", out.whole ? "true" : "false");
  const response = await fetch("v1/cartoonize", { method: "POST", body: form });
  if (thisRun !== run) return null;
  if (!response.ok) {
    let reason = response.statusText;
    try {
      reason = (await response.json()).reason || reason;
    } catch (e) { /* not JSON */ }
    out.img.dataset.state = "error";
    throw new Error(`${response.status}: ${reason}`);
  }
  const blob = await response.blob();
  if (thisRun !== run) return null;
  const url = objectUrl(blob);
  out.img.onload = () => { out.img.dataset.state = "done"; };
  out.img.src = url;
  out.link.href = url;
  out.link.setAttribute("aria-disabled", "false");
  return response.headers.get("X-Faces-Used");
}

async function handle(file) {
  if (!file) return;
  run += 1;
  const thisRun = run;
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [];
  photo.src = objectUrl(file);
  const base = (file.name || "photo").replace(/\.[^.]*$/, "");
  outputs.face.link.download = `${base}_cartoon_face.png`;
  outputs.whole.link.download = `${base}_cartoon.png`;
  setStatus("Cartoonizing…");
  document.body.classList.add("busy");
  const started = performance.now();
  const results = await Promise.allSettled([
    cartoonize(file, outputs.face, thisRun),
    cartoonize(file, outputs.whole, thisRun),
  ]);
  if (thisRun !== run) return;
  document.body.classList.remove("busy");
  const failed = results.find((r) => r.status === "rejected");
  if (failed) {
    setStatus(failed.reason.message, true);
  } else {
    const faces = results[1].value;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`Done in ${seconds} s: ${faces} face${faces === "1" ? "" : "s"} cartoonized.`);
  }
}

fileInput.addEventListener("change", () => handle(fileInput.files[0]));
["dragenter", "dragover"].forEach((type) =>
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((type) =>
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => handle(e.dataTransfer.files[0]));
