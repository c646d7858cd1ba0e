"""Write a tiny random-weight Llama-style model and an in-process trained tokenizer.

The model answers with random text, but it has the real shape vLLM and transformers load: tests and
the demo run the full serving path on it with no network.

    >>> write_tiny_model("/tmp/tiny")        # doctest: +SKIP
    PosixPath('/tmp/tiny')
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# A vocabulary of everyday English and of TPC-H's text generator, so that the tokenizer learns
# realistic merges: prompts over TPC-H comments then tokenize to a realistic number of tokens.
_WORDS = (  # noqa: SIM905 - one readable block of words
    "the a an of to and in is it that for on with as was at by be this from or are not have but "
    "customer order orders review product delivery late slow fast quality price refund shipped "
    "package box damaged happy angry sad neutral positive negative summary summarize answer yes no "
    "question classify extract sentiment complaint request account balance supplier part nation "
    "region market segment priority urgent clerk status comment ship mode date total quantity "
    "furiously carefully quickly slyly blithely ironic final regular express special pending even "
    "bold silent unusual deposits requests accounts packages theodolites instructions foxes ideas "
    "pinto beans dependencies platelets asymptotes courts dolphins excuses sheaves warthogs sauternes "
    "haggle sleep wake nag cajole detect integrate boost use are was above after against along among "
    "around at before behind beneath beside between beyond during except inside into near outside "
    "over past since through throughout toward under until up upon without json object name value "
    "reason score label step tool agent critique revise final recommendation feature features"
).split()  # noqa: SIM905 - one readable block of words


def _training_corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        n = rng.randint(4, 24)
        words = [rng.choice(_WORDS) for _ in range(n)]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ":"])
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 99999)} {rng.random():.2f}"
        if rng.random() < 0.1:
            sentence = json.dumps({rng.choice(_WORDS): sentence})
        corpus.append(sentence)
    return corpus


def write_tiny_model(
    directory: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Create the model files in `directory` (created if missing) and return its path.

    Deterministic for a given seed: the same weights and tokenizer every time.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_positions,
    )
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "HALO_TINY_MODEL.txt").write_text(
        "Random-weight test model written by halo-sql: its answers are random text.\n"
    )
    return out
