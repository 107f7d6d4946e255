// openai_client.mjs - the official `openai` npm package against the sd3d HTTP API.
//
// usage: node openai_client.mjs BASE_URL API_KEY WIDTH HEIGHT [--errors]
//   BASE_URL: http://127.0.0.1:PORT/v1
// Generates two images with images.generate (response_format b64_json, seed extension),
// decodes each b64_json and checks the PNG signature and the IHDR size; with --errors also
// checks that the SDK raises BadRequestError (400, response_format "url") and
// AuthenticationError (401, wrong key) with our messages. $HTTP_MODEL, when set, is sent as
// the model name. Exit 0 pass, 1 fail.
import OpenAI from "openai";

const [base, key, w, h, ...flags] = process.argv.slice(2);
const width = Number(w), height = Number(h);
let failures = 0;
function check(cond, what) {
  if (!cond) {
    console.error(`openai_client: FAIL: ${what}`);
    failures++;
  }
}

const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0, timeout: 120000 });
const model = process.env.HTTP_MODEL || undefined; // the cluster's model name, or the default
const res = await client.images.generate({
  model,
  prompt: "a photo of a cat",
  n: 2,
  size: `${width}x${height}`,
  response_format: "b64_json",
  // extension fields ride along in the body
  seed: 42,
  steps: 2,
});
check(typeof res.created === "number" && res.created > 1.6e9, `created ${res.created}`);
check(Array.isArray(res.data) && res.data.length === 2, `data length ${res.data?.length}`);
for (const [i, d] of (res.data ?? []).entries()) {
  const png = Buffer.from(d.b64_json ?? "", "base64");
  const sig = png.subarray(0, 8).toString("hex");
  check(sig === "89504e470d0a1a0a", `image ${i}: PNG signature ${sig}`);
  check(png.subarray(12, 16).toString("latin1") === "IHDR", `image ${i}: IHDR first`);
  const pw = png.readUInt32BE(16), ph = png.readUInt32BE(20);
  check(pw === width && ph === height, `image ${i}: IHDR ${pw}x${ph}, want ${width}x${height}`);
  check(d.revised_prompt === "a photo of a cat", `image ${i}: revised_prompt ${d.revised_prompt}`);
  console.log(`openai_client: image ${i}: ${png.length} bytes PNG ${pw}x${ph}`);
}

if (flags.includes("--errors")) {
  try {
    await client.images.generate({ prompt: "x", response_format: "url" });
    check(false, "response_format url was accepted");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `url: ${e?.constructor?.name} ${e?.status}`);
    check(/stores no files/.test(e?.message ?? ""), `url: message '${e?.message}'`);
  }
  const wrong = new OpenAI({ baseURL: base, apiKey: "wrong-" + key, maxRetries: 0 });
  try {
    await wrong.images.generate({ prompt: "x" });
    check(false, "a wrong key was accepted");
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError, `key: ${e?.constructor?.name} ${e?.status}`);
  }
}
console.log(failures ? `openai_client: ${failures} failed` : "openai_client: ok");
process.exit(failures ? 1 : 0);
