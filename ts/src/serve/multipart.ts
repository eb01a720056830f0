/**
 * A small, bounded `multipart/form-data` parser (RFC 7578) for request bodies already read
 * into memory under the service's size limit. It takes what browsers and `curl -F` send:
 * CRLF line breaks, one `Content-Disposition: form-data; name="…"` per part, files marked
 * by `filename`. Limits on the number of parts and on header size keep a hostile body cheap.
 */

/** One part of a form: a text field, or a file when it has a `filename`. */
export interface FormPart {
  name: string;
  filename?: string;
  contentType?: string;
  data: Buffer;
}

/** The body is not valid multipart/form-data. */
export class MultipartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MultipartError";
  }
}

/** Limits of {@link parseMultipart}. */
export interface MultipartLimits {
  /** Most parts accepted. Default: 32. */
  maxParts?: number;
  /** Most bytes of one part's header block. Default: 8 KiB. */
  maxHeaderBytes?: number;
}

/** The `boundary` parameter of a `multipart/form-data` content type. */
export function multipartBoundary(contentType: string): string {
  const match = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType);
  const boundary = match?.[1] ?? match?.[2];
  if (!boundary) throw new MultipartError("multipart/form-data needs a boundary parameter in its Content-Type");
  return boundary;
}

function headerParam(header: string, param: string): string | undefined {
  const match =
    new RegExp(`;\\s*${param}="([^"]*)"`, "i").exec(header) ?? new RegExp(`;\\s*${param}=([^;\\s]+)`, "i").exec(header);
  return match?.[1];
}

/** Splits `body` into its parts. */
export function parseMultipart(body: Buffer, boundary: string, limits: MultipartLimits = {}): FormPart[] {
  const maxParts = limits.maxParts ?? 32;
  const maxHeaderBytes = limits.maxHeaderBytes ?? 8192;
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: FormPart[] = [];

  let at = body.indexOf(delimiter);
  if (at < 0) throw new MultipartError("the body does not contain its multipart boundary");
  for (;;) {
    at += delimiter.length;
    // `--boundary--` closes the body.
    if (body[at] === 0x2d && body[at + 1] === 0x2d) return parts;
    if (body[at] !== 0x0d || body[at + 1] !== 0x0a)
      throw new MultipartError("a multipart boundary is not followed by CRLF");
    at += 2;
    const headerEnd = body.indexOf("\r\n\r\n", at);
    if (headerEnd < 0 || headerEnd - at > maxHeaderBytes) {
      throw new MultipartError(`a part's headers are missing their end or longer than ${maxHeaderBytes} bytes`);
    }
    const headers = body.subarray(at, headerEnd).toString("latin1").split("\r\n");
    const next = body.indexOf(Buffer.concat([Buffer.from("\r\n"), delimiter]), headerEnd + 4);
    if (next < 0) throw new MultipartError("the body ends inside a part (no closing boundary)");
    if (parts.length >= maxParts) throw new MultipartError(`more than ${maxParts} parts`);

    let disposition: string | undefined;
    let contentType: string | undefined;
    for (const line of headers) {
      const colon = line.indexOf(":");
      const key = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (key === "content-disposition") disposition = value;
      else if (key === "content-type") contentType = value;
    }
    const name = disposition && /^form-data/i.test(disposition) ? headerParam(disposition, "name") : undefined;
    if (name === undefined) throw new MultipartError('every part needs Content-Disposition: form-data; name="…"');
    const filename = disposition ? headerParam(disposition, "filename") : undefined;
    const part: FormPart = { name, data: body.subarray(headerEnd + 4, next) };
    if (filename !== undefined) part.filename = filename;
    if (contentType !== undefined) part.contentType = contentType;
    parts.push(part);
    at = next + 2;
  }
}
