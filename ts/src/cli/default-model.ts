/**
 * The model the CLI and `flamingo serve` use when none is named: the one embedded in the
 * package. `models/default` is the trained default model; a build made before it exists
 * ships only the untrained `models/tiny`, used then.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";

import { packageRoot } from "../native.js";

/** The embedded default model, relative to the package root. */
export const DEFAULT_MODEL = "models/default";
/** Used when {@link DEFAULT_MODEL} is not in this build. */
const FALLBACK_MODEL = "models/tiny";

/** The absolute folder of the embedded model. */
export function defaultModelDir(): string {
  const root = packageRoot();
  const preferred = join(root, DEFAULT_MODEL);
  return existsSync(join(preferred, "flamingo.json")) ? preferred : join(root, FALLBACK_MODEL);
}
