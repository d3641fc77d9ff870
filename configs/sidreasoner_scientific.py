"""SIDReasoner on Gemma 3 270M, Amazon Industrial & Scientific (full item text).

Three stages on the language model, then the evaluation (s2gr_jax/lm/reasoner.py):
``align`` (SID-language alignment: the SID/title streams of lm/corpus.py, completion
loss), ``activate`` (think-then-SID samples whose rationales come from the data),
``rl`` (GRPO, rollouts think freely then emit a SID under the catalogue constraint,
SIDReasoner's prefix reward, 16 rollouts, KL 0.001), ``eval`` (base and every finished
stage, non-thinking and thinking, SPEC §0 and SIDReasoner's history <= 10, beside
popularity, the transition rows and the runs named in reasoner.eval.compare). SIDs:
CoBa over the MiniLM text vectors (3 x 256 + de-dup), S2GR's tokenizer; pass
``--config.tokenizer.from_workdir=RUN`` to share one table with TIGER / S2GR runs.
Default: LoRA r16 + embeddings, every stream, 3,000 + 1,000 SFT steps, 200 GRPO steps,
every user evaluated: a GPU job.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/sidreasoner_scientific.py --workdir runs/sidreasoner_scientific
  # one stage at a time (each resumes in WORKDIR/<stage>/; a stage starts from the
  # best checkpoint of the latest earlier one):
  ... --config.stage=align   (then activate, rl, eval)
  # the CPU budget (SID streams, 200 + 40 SFT steps with rationales of leaf
  # categories, 6 GRPO steps, thoughts <= 64 tokens, 300 test users):
  ... --config configs/sidreasoner_scientific.py:cpu --workdir runs/sr_cpu \\
      --config.tokenizer.from_workdir=runs/s2gr_scientific \\
      --config.reasoner.eval.compare=TIGER=runs/tiger_scientific,S2GR=runs/s2gr_scientific
  # the random tiny LM, a few steps of each stage (tests):
  ... --config configs/sidreasoner_scientific.py:tiny --workdir /tmp/sr_tiny

Measured (:cpu, seed 0, the 2-core AMD EPYC CPU, float32; docs/results.md, tenth and
eleventh sessions): stage 1 4,354 s (shared; val loss 14.15 -> 3.21 nats), stage 2
1,067 s (categories rationales; 5.34 -> 1.68), stage 3 1,233 s (every GRPO reward 0.1:
no thought closed with </think>, no update; think_init='turn', the recipe's since, makes
every thought close), evaluation 4 min a non-thinking and 12 min a thinking row of 300
test users. R@10 / N@10 (history <= 10): base 0.0033 /
0.0021, stage 1 0.0467 / 0.0239, stage 2 0.0267 / 0.0184 (thinking 0.0233 / 0.0137);
TIGER 0.0633 / 0.0426 and S2GR 0.0800 / 0.0405 on the same SIDs, popularity 0.0200 /
0.0136.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.sidreasoner_recipe("scientific", arg)
