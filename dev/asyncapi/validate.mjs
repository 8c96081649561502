// Parses the AsyncAPI document with the official parser; exits 1 on any error-severity
// diagnostic (warnings and hints are printed, not fatal). Usage: node validate.mjs [FILE]
import { fileURLToPath } from "node:url";
import path from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const here = path.dirname(fileURLToPath(import.meta.url));
const file = path.resolve(
  process.argv[2] ?? path.join(here, "../../ingestor/contracts/asyncapi.json"),
);
// DiagnosticSeverity from @stoplight/types: 0 error, 1 warning, 2 information, 3 hint.
const SEVERITY = ["error", "warning", "info", "hint"];

const parser = new Parser();
// fromFile resolves the relative $refs to the JSON Schemas next to the document.
const { document, diagnostics } = await fromFile(parser, file).parse();
let errors = 0;
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join("/") : "(root)";
  console.log(`${SEVERITY[d.severity] ?? d.severity} ${d.code} at ${where}: ${d.message}`);
  if (d.severity === 0) errors += 1;
}
if (errors || document === undefined) {
  console.log(`asyncapi: ${file}: ${errors} error(s)`);
  process.exit(1);
}
console.log(`asyncapi: ${file} is a valid AsyncAPI ${document.version()} document`);
