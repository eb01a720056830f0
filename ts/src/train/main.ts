/**
 * A stand-alone entry for the `train` command until the `flamingo` binary wires it in:
 * `node dist/train-main.js --config train.json` (or `… train --config train.json`).
 */

import { runTrainCommand } from "./cli.js";

const argv = process.argv.slice(2);
runTrainCommand(argv[0] === "train" ? argv.slice(1) : argv).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`flamingo train: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
