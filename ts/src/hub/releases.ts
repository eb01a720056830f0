/**
 * The five OpenFlamingo v2 releases (spec §9) and where their parts come from, and
 * {@link resolveRelease}: a release id or a local folder → the local paths the loader takes.
 */

import { readFile, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";

import { prettifyError, z } from "zod";

import { ErrorCode, FlamingoError, invalidInput } from "../errors.js";
import { type CrossAttentionPlan, CrossAttentionPlanSchema, type Tokens, TokensSchema } from "../options.js";
import { isFile } from "./cache.js";
import { type HubOptions, HubOptionsSchema, snapshotDownload } from "./download.js";

/** The hub ids of the releases (`openflamingo/…` repositories holding `checkpoint.pt`). */
export const RELEASE_IDS = [
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
  "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
] as const;

export type ReleaseId = (typeof RELEASE_IDS)[number];

/** One release: what the reference's `create_model_and_transforms` is called with, and more. */
export interface Release {
  /** Hub repository of the checkpoint. */
  id: ReleaseId;
  /** The vision tower as open_clip names it (`clip_vision_encoder_path`, `…_pretrained`). */
  visionOpenClip: { model: "ViT-L-14"; pretrained: "openai" };
  /** Hub repository of the same CLIP weights in transformers format. */
  visionRepo: string;
  /** `lang_encoder_path`: hub repository of the LM. */
  lmRepo: string;
  /** `tokenizer_path`: hub repository of the tokenizer (the LM's, for every release). */
  tokenizerRepo: string;
  /** `cross_attn_every_n_layers`. */
  crossAttentionEveryN: 1 | 2 | 4;
  /** Whether training updated the `<image>`/`<|endofchunk|>` embedding rows (frozen for the 4B models, spec §2.6). */
  embeddingRowsTrained: boolean;
  /** The checkpoint file in the release repository. */
  checkpointFile: "checkpoint.pt";
  /** Where the LM's decoder layers live (the checkpoint's key prefix), spec §2.4. */
  decoderLayersPath: "transformer.blocks" | "gpt_neox.layers";
  /** Special token ids of the GPT-NeoX tokenizer with OpenFlamingo's tokens added (spec §2.2). */
  tokens: Tokens;
  /** `len(tokenizer)`: the LM vocabulary is resized to this many rows. */
  vocabSize: number;
}

const CLIP_VIT_L_14 = {
  visionOpenClip: { model: "ViT-L-14", pretrained: "openai" },
  visionRepo: "openai/clip-vit-large-patch14",
  checkpointFile: "checkpoint.pt",
  tokens: { media: 50278, endOfChunk: 50277 },
  vocabSize: 50280,
} as const;

function release(
  id: ReleaseId,
  lmRepo: string,
  crossAttentionEveryN: 1 | 2 | 4,
  embeddingRowsTrained: boolean,
  decoderLayersPath: Release["decoderLayersPath"],
): Release {
  return {
    id,
    ...CLIP_VIT_L_14,
    tokens: { ...CLIP_VIT_L_14.tokens },
    visionOpenClip: { ...CLIP_VIT_L_14.visionOpenClip },
    lmRepo,
    tokenizerRepo: lmRepo,
    crossAttentionEveryN,
    embeddingRowsTrained,
    decoderLayersPath,
  };
}

/** The releases by id (spec §9). */
export const RELEASES: Readonly<Record<ReleaseId, Release>> = Object.freeze({
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b": release(
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
    "anas-awadalla/mpt-1b-redpajama-200b",
    1,
    true,
    "transformer.blocks",
  ),
  "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct": release(
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
    "anas-awadalla/mpt-1b-redpajama-200b-dolly",
    1,
    true,
    "transformer.blocks",
  ),
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b": release(
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
    "togethercomputer/RedPajama-INCITE-Base-3B-v1",
    2,
    false,
    "gpt_neox.layers",
  ),
  "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct": release(
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
    "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
    2,
    false,
    "gpt_neox.layers",
  ),
  "openflamingo/OpenFlamingo-9B-vitl-mpt7b": release(
    "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
    "anas-awadalla/mpt-7b",
    4,
    true,
    "transformer.blocks",
  ),
});

/** Whether `id` names one of the releases. */
export function isReleaseId(id: string): id is ReleaseId {
  return (RELEASE_IDS as readonly string[]).includes(id);
}

/** The tokenizer file the engine reads, and the files that describe its settings. */
export const TOKENIZER_FILES = ["tokenizer.json"] as const;
export const TOKENIZER_OPTIONAL_FILES = ["tokenizer_config.json", "special_tokens_map.json"] as const;

/** What to fetch from one repository for a release. */
export interface RepoDownload {
  /** What the files are for: the vision tower, the LM (with its tokenizer when they share a repository), the tokenizer, the checkpoint. */
  role: "vision" | "lm" | "tokenizer" | "checkpoint";
  repo: string;
  /** Files that must exist. */
  files: string[];
  /** Files taken when the repository has them. */
  optionalFiles: string[];
  /** Whether the model weights come too (first format found; shards from the index). */
  weights: boolean;
}

/** The downloads a release needs, one per repository, in the order they are made. */
export function releaseDownloads(id: ReleaseId): RepoDownload[] {
  const r = RELEASES[id];
  const shared = r.tokenizerRepo === r.lmRepo;
  const downloads: RepoDownload[] = [
    { role: "vision", repo: r.visionRepo, files: ["config.json"], optionalFiles: [], weights: true },
    {
      role: "lm",
      repo: r.lmRepo,
      files: ["config.json", ...(shared ? TOKENIZER_FILES : [])],
      optionalFiles: shared ? [...TOKENIZER_OPTIONAL_FILES] : [],
      weights: true,
    },
  ];
  if (!shared) {
    downloads.push({
      role: "tokenizer",
      repo: r.tokenizerRepo,
      files: [...TOKENIZER_FILES],
      optionalFiles: [...TOKENIZER_OPTIONAL_FILES],
      weights: false,
    });
  }
  downloads.push({ role: "checkpoint", repo: r.id, files: [r.checkpointFile], optionalFiles: [], weights: false });
  return downloads;
}

const manifestShape = {
  /** Folder of the CLIP vision tower in HF format, relative to the manifest. */
  vision: z.string().min(1),
  /** Folder of the LM in HF format, relative to the manifest. */
  lm: z.string().min(1),
  /** The tokenizer's `tokenizer.json`. Default: `{lm}/tokenizer.json`. */
  tokenizer: z.string().min(1).optional(),
  /** The OpenFlamingo checkpoint; `null` or absent: none (fresh Flamingo modules). */
  checkpoint: z.string().min(1).nullable().optional(),
  /** Where the cross-attention blocks go. Default: the named release's, else required. */
  crossAttention: CrossAttentionPlanSchema.optional(),
  /** The release this folder is a copy of: its settings fill what the manifest leaves out. */
  release: z.enum(RELEASE_IDS).optional(),
  /** Special token ids. Default: the named release's. */
  tokens: TokensSchema.optional(),
  /** Vocabulary rows. Default: the named release's. */
  vocabSize: z.number().int().positive().optional(),
  /** Free text for people. */
  note: z.string().optional(),
};
/**
 * `flamingo.json`: a local model folder's manifest. Paths are relative to the folder. Keys
 * it does not know are ignored, so newer manifests still load.
 */
export const FlamingoManifestSchema: z.ZodObject<typeof manifestShape> = z.object(manifestShape);
export type FlamingoManifest = z.infer<typeof FlamingoManifestSchema>;

const resolveShape = {
  ...HubOptionsSchema.shape,
  /**
   * Where the cross-attention blocks go, for a local folder that does not say (no manifest
   * entry, no release name). Overrides the folder's own setting. Default: the folder's.
   */
  crossAttention: CrossAttentionPlanSchema.optional(),
};
/** Options of {@link resolveRelease}: hub options for release ids, and a fallback for local folders. */
export const ResolveReleaseOptionsSchema: z.ZodObject<typeof resolveShape, z.core.$strict> =
  z.strictObject(resolveShape);
export type ResolveReleaseOptions = z.infer<typeof ResolveReleaseOptionsSchema>;

/** A model's parts as local paths, ready for {@link Flamingo.load}. */
export interface ResolvedRelease {
  /** The release, when the model is one (by id, manifest or folder name). */
  release?: ReleaseId;
  /** Folder of the CLIP vision tower in HF format. */
  vision: string;
  /** Folder of the LM in HF format. */
  lm: string;
  /** The tokenizer's `tokenizer.json`. */
  tokenizer: string;
  /** The OpenFlamingo checkpoint, absent when the Flamingo modules start fresh. */
  checkpoint?: string;
  /** Where the cross-attention blocks go. */
  crossAttention: CrossAttentionPlan;
  /** `cross_attn_every_n_layers`, when the plan is one (not an explicit layer list). */
  crossAttentionEveryN?: number;
  /** Special token ids, when known without reading the tokenizer. */
  tokens?: Tokens;
  /** Vocabulary rows, when known. */
  vocabSize?: number;
  /** Where the LM's decoder layers live, when known. */
  decoderLayersPath?: string;
  /** Whether the special-token embedding rows were trained, when known. */
  embeddingRowsTrained?: boolean;
}

/**
 * Finds a model's parts on disk, downloading a release first when needed.
 *
 * - A release id (see {@link RELEASE_IDS}): the vision tower, the LM with its tokenizer and
 *   the checkpoint are fetched into the hub cache (or found there) and their snapshot paths
 *   returned, with the release's settings.
 * - A local folder with a `flamingo.json` manifest ({@link FlamingoManifestSchema}).
 * - A local folder laid out as a release: `vision/`, `lm/` and `checkpoint.pt` (the tokenizer in
 *   `tokenizer/` or `lm/`). Its settings come from `options.crossAttention`, else from the
 *   release whose name the folder bears (e.g. `…/OpenFlamingo-3B-vitl-mpt1b`).
 */
export async function resolveRelease(idOrDir: string, options: ResolveReleaseOptions = {}): Promise<ResolvedRelease> {
  const parsed = ResolveReleaseOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("resolveRelease options", parsed.error);
  const { crossAttention, ...hub } = parsed.data;
  if (await isDirectory(idOrDir)) return resolveFolder(resolve(idOrDir), crossAttention);
  if (isReleaseId(idOrDir)) return downloadRelease(idOrDir, hub);
  throw new FlamingoError(
    ErrorCode.InvalidInput,
    `"${idOrDir}" is neither a local folder nor a known release; the releases are ${RELEASE_IDS.join(", ")}`,
  );
}

async function downloadRelease(id: ReleaseId, hub: HubOptions): Promise<ResolvedRelease> {
  const r = RELEASES[id];
  const dirs: Partial<Record<RepoDownload["role"], string>> = {};
  for (const d of releaseDownloads(id)) {
    const snapshot = await snapshotDownload(d.repo, d.files, {
      ...hub,
      optionalFiles: d.optionalFiles,
      weights: d.weights,
    });
    dirs[d.role] = snapshot.dir;
  }
  const need = (role: RepoDownload["role"]): string => {
    const dir = dirs[role];
    if (dir === undefined) throw new Error(`unreachable: no ${role} download in the release table`);
    return dir;
  };
  return {
    release: id,
    vision: need("vision"),
    lm: need("lm"),
    tokenizer: join(dirs.tokenizer ?? need("lm"), "tokenizer.json"),
    checkpoint: join(need("checkpoint"), r.checkpointFile),
    ...settingsOf(r),
  };
}

function settingsOf(r: Release): Omit<ResolvedRelease, "vision" | "lm" | "tokenizer" | "checkpoint" | "release"> {
  return {
    crossAttention: { everyNLayers: r.crossAttentionEveryN },
    crossAttentionEveryN: r.crossAttentionEveryN,
    tokens: { ...r.tokens },
    vocabSize: r.vocabSize,
    decoderLayersPath: r.decoderLayersPath,
    embeddingRowsTrained: r.embeddingRowsTrained,
  };
}

/** The release a folder's name matches (`OpenFlamingo-9B-vitl-mpt7b`, case-insensitive). */
function releaseNamed(dir: string): ReleaseId | undefined {
  const name = basename(dir).toLowerCase();
  return RELEASE_IDS.find((id) => id.split("/")[1]?.toLowerCase() === name);
}

async function resolveFolder(dir: string, crossAttention: CrossAttentionPlan | undefined): Promise<ResolvedRelease> {
  const manifestPath = join(dir, "flamingo.json");
  let manifest: FlamingoManifest;
  if (await isFile(manifestPath)) {
    manifest = await readManifest(manifestPath);
  } else {
    const tokenizerDir = (await isDirectory(join(dir, "tokenizer"))) ? "tokenizer" : "lm";
    manifest = {
      vision: "vision",
      lm: "lm",
      tokenizer: `${tokenizerDir}/tokenizer.json`,
      checkpoint: (await isFile(join(dir, "checkpoint.pt"))) ? "checkpoint.pt" : null,
    };
  }

  const releaseId = manifest.release ?? releaseNamed(dir);
  const known = releaseId === undefined ? undefined : RELEASES[releaseId];
  const plan = crossAttention ?? manifest.crossAttention ?? (known && { everyNLayers: known.crossAttentionEveryN });
  if (plan === undefined) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `${dir} does not say where the cross-attention blocks go: add "crossAttention" to its flamingo.json ` +
        `(e.g. {"everyNLayers": 1}), or pass the crossAttention option`,
    );
  }

  const vision = resolve(dir, manifest.vision);
  const lm = resolve(dir, manifest.lm);
  const tokenizer = resolve(dir, manifest.tokenizer ?? join(manifest.lm, "tokenizer.json"));
  const checkpoint = manifest.checkpoint == null ? undefined : resolve(dir, manifest.checkpoint);
  const where = `in ${dir}`;
  if (!(await isDirectory(vision))) throw missing(`the vision tower folder ${vision}`, where);
  if (!(await isDirectory(lm))) throw missing(`the LM folder ${lm}`, where);
  if (!(await isFile(tokenizer))) throw missing(`the tokenizer ${tokenizer}`, where);
  if (checkpoint !== undefined && !(await isFile(checkpoint))) throw missing(`the checkpoint ${checkpoint}`, where);

  const resolved: ResolvedRelease = { vision, lm, tokenizer, crossAttention: plan };
  if (checkpoint !== undefined) resolved.checkpoint = checkpoint;
  if ("everyNLayers" in plan) resolved.crossAttentionEveryN = plan.everyNLayers;
  const tokens = manifest.tokens ?? known?.tokens;
  if (tokens !== undefined) resolved.tokens = { ...tokens };
  const vocabSize = manifest.vocabSize ?? known?.vocabSize;
  if (vocabSize !== undefined) resolved.vocabSize = vocabSize;
  if (known !== undefined) {
    resolved.release = known.id;
    resolved.decoderLayersPath = known.decoderLayersPath;
    resolved.embeddingRowsTrained = known.embeddingRowsTrained;
  }
  return resolved;
}

async function readManifest(path: string): Promise<FlamingoManifest> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (error) {
    throw new FlamingoError(ErrorCode.Config, `${path} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const parsed = FlamingoManifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new FlamingoError(ErrorCode.Config, `${path} is not a valid manifest:\n${prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}

function missing(what: string, where: string): FlamingoError {
  return new FlamingoError(ErrorCode.Io, `${what} does not exist (${where})`);
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}
