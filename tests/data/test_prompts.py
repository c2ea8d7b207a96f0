from aha.data.prompts import R1_ZERO_INSTRUCTION, PromptBuilder
from aha.models import char_tokenizer


def test_r1_zero_with_a_chat_template_puts_the_instruction_in_the_system_message():
    text = PromptBuilder(char_tokenizer(), "r1-zero", prefill="<think>").build("2 + 2 =")
    assert text == (f"<|im_start|>system\n{R1_ZERO_INSTRUCTION}<|im_end|>\n<|im_start|>user\n2 + 2 =<|im_end|>\n"
                    "<|im_start|>assistant\n<think>")


def test_r1_zero_without_a_chat_template_is_the_papers_plain_layout():
    text = PromptBuilder(char_tokenizer(), "r1-zero", prefill="<think>", use_chat=False).build("2 + 2 =")
    assert text == f"{R1_ZERO_INSTRUCTION} User: 2 + 2 =\nAssistant: <think>"
    assert "<think> </think> and <answer> </answer> tags" in R1_ZERO_INSTRUCTION


def test_chat_and_plain_templates():
    tok = char_tokenizer()
    assert PromptBuilder(tok, "chat").build("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert PromptBuilder(tok, "plain").build("hi") == "hi"
