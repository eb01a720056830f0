/**
 * When no native binary fits, loading fails with ERR_NATIVE_BINDING and a message naming the
 * platform. (Vitest runs each test file in its own process, so pointing the napi loader at a
 * missing file here does not affect the other files.)
 */

import { expect, it } from "vitest";

import { Flamingo, FlamingoError } from "../ts/src/index.js";
import { goldenLoadOptions } from "./helpers/golden.js";

it("names the platform when no native binary can be loaded", async () => {
  process.env.NAPI_RS_NATIVE_LIBRARY_PATH = "/nonexistent/flamingo-vlm.node";
  const error = await Flamingo.load(goldenLoadOptions("llama")).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FlamingoError);
  expect((error as FlamingoError).code).toBe("ERR_NATIVE_BINDING");
  expect((error as FlamingoError).message).toContain(`${process.platform}-${process.arch}`);
  expect((error as FlamingoError).message).toMatch(/npm run build/);
});
