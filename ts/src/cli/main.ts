#!/usr/bin/env node
/** The `flamingo` executable: runs the command line and exits with its status. */

import { runCli } from "./run.js";

runCli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  },
);
