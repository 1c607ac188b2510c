"""The ways to classify, as one table of ``PipelineSpec``: ``cbnet``, ``cbnet-fallback``, ``branchynet``,
``lenet``, the truncated ``branch`` and, in builds made ``--with multiexit``, the multi-exit ``multiexit``.

A spec names the pipeline's models in order, the links between them (which output feeds which model), the path
label of each set of models an image can run through, the runner that drives them by its key (``Runner``; the
code of each is in ``runners`` and ``exits``, found through ``pipelines.RUNNERS``) and the option of its gate with
the value that turns the gate off. The table is data: it imports no runner. The names other code refers to a
pipeline by (its role) are here too, with the lookups of a manifest's choices (``spec_in``, ``as_built``,
``models_for``); ``pipelines.Pipeline`` runs a spec on a bundle's models.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Optional

from cbnet_tl.runtime.errors import BundleError


class Runner(str, enum.Enum):
    """The key of each way to run a spec's models (``pipelines.RUNNERS`` maps it to its code)."""

    CHAIN = "chain"  # models one after another; the last one's scores decide
    FALLBACK = "fallback"  # the first model; the second too for images below a confidence threshold
    EARLY_EXIT = "early_exit"  # BranchyNet: the branch's entropy decides who runs the tail
    MULTI_EXIT = "multi_exit"  # an exit after each segment; an image leaves at the first confident one


# Pipeline options (a manifest's ``pipelines.NAME.options``; ``Pipeline(options=...)`` overrides them)
CONFIDENCE_THRESHOLD = "confidence_threshold"  # cbnet-fallback's, chosen on held-out images by the build
EXIT_THRESHOLDS = "exit_thresholds"  # multiexit's: the least confidence that exits, per exit but the last
EXIT_TABLE = "exit_table"  # multiexit's: the shares going on past each exit, by confidence, for EENet
ENTROPY_THRESHOLD = "entropy_threshold"  # branchynet's; without it, the manifest's entropy_threshold
# A confidence threshold no image reaches (a top probability is at most 1): every image goes on past the gate
EVERY_IMAGE_GOES_ON = 2.0
NO_ENTROPY_IS_BELOW = 0.0  # an entropy threshold no image is under: every image goes on to the tail


@dataclass(frozen=True)
class Gate:
    """The option that decides which images go on past a pipeline's first model(s), and its value that sends every
    image through every model (what ``run.py trace`` times and the build reads every exit with)."""

    option: str
    off: object


@dataclass(frozen=True)
class Link:
    """``source``'s output number ``output`` (raw bytes) is ``target``'s input."""

    source: str
    output: int
    target: str


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    models: tuple  # in the order they run
    paths: dict  # models an image ran through (tuple) -> path label
    runner: Runner  # the key of its runner (pipelines.RUNNERS)
    links: tuple = ()
    gate: Optional[Gate] = None  # None: every image runs every model
    deployed: bool = True  # shipped in bundles and checked by the build
    description: str = ""
    optional: bool = False  # built only when asked for (`cbnet-tl build --with NAME`): deployed where the manifest has it
    choices: dict = field(default_factory=dict)  # model -> the models a build may put in its place (the manifest says)

    def with_models(self, models) -> "PipelineSpec":
        """This spec with the models a manifest names in the place of its own (``choices``), or a clear error."""
        models = tuple(models)
        if not models or models == self.models:
            return self
        allowed = len(models) == len(self.models) and all(
            new == old or new in self.choices.get(old, ()) for new, old in zip(models, self.models))
        if not allowed:
            raise BundleError(f"Pipeline {self.name} cannot run models {list(models)}; expected {list(self.models)}"
                              + (f" with {self.choices} in their place" if self.choices else "") + "; rebuild the bundle")
        renamed = {old: new for old, new in zip(self.models, models)}
        paths = {tuple(renamed[m] for m in key): "+".join(renamed.get(part, part) for part in label.split("+"))
                 for key, label in self.paths.items()}
        links = tuple(Link(renamed[l.source], l.output, renamed[l.target]) for l in self.links)
        return dataclasses.replace(self, models=models, paths=paths, links=links)

    def path_of(self, stages) -> str:
        """The path label of an image that ran through ``stages`` (stage names = model names)."""
        ran = tuple(s for s in self.models if s in set(stages))
        return self.paths.get(ran, "mixed")

    @property
    def full_path(self) -> str:
        """The path label of an image that ran through every model (branchynet: ``branch+main``)."""
        return self.paths[self.models]

    @property
    def gates_off(self) -> dict:
        """The options that send every image through every model: no early exit, no confidence gate."""
        return {} if self.gate is None else {self.gate.option: self.gate.off}

    @property
    def tail(self) -> tuple:
        """Models only some images run (an early exit's later stages)."""
        always = set.intersection(*(set(models) for models in self.paths))
        return tuple(m for m in self.models if m not in always)


# The pipelines other code refers to by their role; everything else about them is in their spec.
DEFAULT_PIPELINE = "cbnet"  # CBNet itself; the default of builds made before they recommended one (default_pipeline)
FALLBACK_PIPELINE = "cbnet-fallback"  # the build chooses its CONFIDENCE_THRESHOLD
EARLY_EXIT_PIPELINE = "branchynet"  # the entropy gate that tells easy images from hard ones
BASELINE_PIPELINE = "lenet"  # what speed-ups are measured against
MULTIEXIT_PIPELINE = "multiexit"  # the multi-exit network (`cbnet-tl build --with multiexit`)
# its segments, one .tflite each: the number of exits, which recipes/multiexit.py's network is built with
MULTIEXIT_STAGES = ("exit1", "exit2", "exit3")
MULTIEXIT_FULL = "multiexit_full"  # its whole path in one graph: the network cbnet-fallback may fall back to
FALLBACK_NETWORKS = {"lenet": "lenet", MULTIEXIT_PIPELINE: MULTIEXIT_FULL}  # `build --fallback` -> model

PIPELINE_SPECS = {spec.name: spec for spec in (
    PipelineSpec(DEFAULT_PIPELINE, ("cbnet",), {("cbnet",): "ae+classifier"}, Runner.CHAIN,
                 description="converting autoencoder and light classifier, fused in one graph (raw pixels in)"),
    PipelineSpec(FALLBACK_PIPELINE, ("cbnet", "lenet"), {("cbnet",): "cbnet", ("cbnet", "lenet"): "cbnet+lenet"},
                 Runner.FALLBACK, gate=Gate(CONFIDENCE_THRESHOLD, EVERY_IMAGE_GOES_ON),
                 choices={"lenet": (MULTIEXIT_FULL,)},
                 description="cbnet; LeNet (or the build's --fallback network) too where cbnet's confidence is "
                             "below the threshold"),
    PipelineSpec(EARLY_EXIT_PIPELINE, ("trunk_branch", "main_tail"),
                 {("trunk_branch",): "branch", ("trunk_branch", "main_tail"): "branch+main"}, Runner.EARLY_EXIT,
                 links=(Link("trunk_branch", 1, "main_tail"),), gate=Gate(ENTROPY_THRESHOLD, NO_ENTROPY_IS_BELOW),
                 description="B-LeNet: exits at the branch when its entropy is below the threshold"),
    PipelineSpec(BASELINE_PIPELINE, ("lenet",), {("lenet",): "main"}, Runner.CHAIN, description="the LeNet baseline"),
    PipelineSpec(MULTIEXIT_PIPELINE, MULTIEXIT_STAGES,
                 {MULTIEXIT_STAGES[:k]: MULTIEXIT_STAGES[k - 1] for k in range(1, len(MULTIEXIT_STAGES) + 1)},
                 Runner.MULTI_EXIT, links=tuple(Link(a, 1, b) for a, b in zip(MULTIEXIT_STAGES, MULTIEXIT_STAGES[1:])),
                 gate=Gate(EXIT_THRESHOLDS, (EVERY_IMAGE_GOES_ON,) * (len(MULTIEXIT_STAGES) - 1)),
                 optional=True, description=f"{len(MULTIEXIT_STAGES)} stages of growing cost, an exit after each; an "
                                            "image leaves at the first exit whose confidence reaches its threshold"),
    PipelineSpec("branch", ("branch",), {("branch",): "branch-only"}, Runner.CHAIN, deployed=False,
                 description="the B-LeNet branch alone (truncated)"),
)}
PIPELINES = tuple(PIPELINE_SPECS)
# every pipeline a bundle may deploy; a bundle deploys those its manifest lists (``deployed_pipelines``)
DEPLOYED_PIPELINES = tuple(name for name, spec in PIPELINE_SPECS.items() if spec.deployed)
OPTIONAL_PIPELINES = tuple(name for name, spec in PIPELINE_SPECS.items() if spec.optional)  # build --with NAME
# Models a bundle carries beside its pipelines' own:
CONVERTER = "autoencoder"  # the converting AE alone: the report's grid and `--convert-image`
INVOKE_PROBE = "noop"  # a reshape-only model: timing it gives the fixed cost of one interpreter call (bench's floor)


def deployed_pipelines(manifest) -> tuple:
    """The pipelines a build or bundle deploys: those of ``DEPLOYED_PIPELINES`` its manifest lists (the optional
    ones only when it was built with them)."""
    return tuple(name for name in DEPLOYED_PIPELINES if name in manifest.pipelines)


def default_pipeline(manifest=None, required: bool = True) -> Optional[str]:
    """The pipeline every command and the bundle's service run when none is named: the manifest's
    ``default_pipeline`` (the build's recommendation, or its --default-pipeline); ``DEFAULT_PIPELINE`` without a
    manifest or for one made before builds recommended a pipeline. When the build recommended none (every pipeline
    failed its learning check), a ``BundleError`` that says to name one, or None if not ``required``."""
    if manifest is None or (manifest.default_pipeline is None and manifest.recommendation is None):
        return DEFAULT_PIPELINE
    name = manifest.default_pipeline
    if name is None:
        if not required:
            return None
        raise BundleError("Expected a default pipeline that passed the build's learning check. Received: none "
                          "passed (see `cbnet-tl check`); name one with --pipeline to run it anyway")
    if name not in manifest.pipelines:
        raise BundleError(f"Expected the manifest's default_pipeline to be one of its pipelines "
                          f"{list(manifest.pipelines)}. Received: {name!r}; rebuild the bundle")
    return name


def spec_in(name: str, manifest=None) -> PipelineSpec:
    """Pipeline ``name``'s spec with the models ``manifest`` names for it (cbnet-fallback's second network is the
    build's choice); the table's own without a manifest or where the manifest does not list it."""
    return as_built(PIPELINE_SPECS[name], manifest)


def as_built(spec: PipelineSpec, manifest=None) -> PipelineSpec:
    """``spec`` with the models ``manifest`` names for it in the place of the table's (``PipelineSpec.choices``)."""
    entry = manifest.pipelines.get(spec.name) if manifest is not None else None
    return spec.with_models(entry.models) if entry is not None and spec.choices else spec


def models_for(pipelines, manifest=None) -> list:
    """The model names a set of pipelines needs, in a stable order (a ``manifest``'s own where it names them:
    cbnet-fallback's second network is the build's choice)."""
    names = []
    for pipeline in pipelines:
        for model in spec_in(pipeline, manifest).models:
            if model not in names:
                names.append(model)
    return names


def spec_for_stages(stage_names) -> Optional[PipelineSpec]:
    """The pipeline whose models cover ``stage_names`` and whose first model ran (every path runs it)."""
    names = set(stage_names)
    for spec in PIPELINE_SPECS.values():
        if spec.models[0] in names and names <= set(spec.models):
            return spec
    return None
