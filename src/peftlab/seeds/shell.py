"""The python command lines of a seed run script, read statically: nothing is executed.

The seeds launch experiments with small bash scripts (compacter `seq2seq/scripts/*.sh`, kernel-adapters
`nlg/scripts/run_nlg.sh`, `nlu/scripts/run_glue.sh`, the ```bash blocks of nlprunners' `packaging/adapters.md`).
Running one would run arbitrary code, so this reads the bash they use, token by token as bash does (shlex
would split `$(a b)` and `a#b` and keep `\\`-newlines): quotes, comments (a `#` line inside a continued
command ends it), `;` `&&` `||` `|` `&` (commands succeed, tests are evaluated), redirections (dropped),
`NAME=value`, `NAME+=value`, `export`, `unset`, `exit`, `$NAME`, `${NAME}`, `${NAME:-w}`, `${NAME-w}`,
`${NAME:+w}`, `${NAME+w}`, `~/`, word splitting of unquoted values, `if/elif/else/fi` on `[ ]`, `[[ ]]`,
`test`, `true`, `false` (`-z -n = == != -eq -lt ...`, `!`), `for NAME in words; do ... done` (one command
per value), `VAR=value python`, `nohup`/`time`/`env`, `./x.py`, and the launchers `python -m
torch.distributed.launch|run`, `torchrun`, `accelerate launch`. Unset variables expand to nothing, as in
bash, and are listed in `Command.unresolved`, as is a variable set by a command substitution (its value
stays `${NAME}`). A substitution is never run: a python command, test or loop that holds one is refused.
Other commands (echo, rm, mkdir, cd, source) start no experiment and are skipped (`read_script` lists them);
case, while, functions, arrays, arithmetic, here-documents and deepspeed are refused in one line.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass, field

from ..errors import PeftlabError
from .bash_lexer import HINT, Lexer, Statement, plain_word

PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
LAUNCH_MODULES = ("torch.distributed.launch", "torch.distributed.run")
REFUSED = {"case", "esac", "while", "until", "select", "function", "{", "}", "!", "eval", "declare", "typeset",
           "local", "readonly", "let", "deepspeed", "mpirun", "horovodrun", "srun"}
KEYWORDS = ("then", "do", "else", "elif", "fi", "done")
TESTS = {"[": "]", "[[": "]]", "test": None, "true": None, "false": None}
INT_TESTS = {"-eq": operator.eq, "-ne": operator.ne, "-lt": operator.lt, "-le": operator.le,
             "-gt": operator.gt, "-ge": operator.ge}
BOOLEAN_LAUNCH_FLAGS = {"--use_env", "--use-env", "--no_python", "--no-python", "-m", "--module", "--standalone",
                        "--run_path", "--run-path", "--multi_gpu", "--cpu", "--use_deepspeed", "--use_fsdp"}
PARAMETER = re.compile(r"([A-Za-z_]\w*|\d+|[@*])(?:(:?[-+])(.*))?", re.S)
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)(\+?=)")


@dataclass(frozen=True)
class Command:
    script: str                    # the python script (or launched module), as written
    args: tuple[str, ...]          # its argv after the script: expanded, quotes removed
    env: dict = field(default_factory=dict)     # what the script exported, and VAR=value prefixes
    processes: int = 1             # --nproc_per_node / --num_processes of a launcher
    line: int = 1                  # where the command starts in the source
    unresolved: tuple[str, ...] = ()            # variables it reads that the script never sets, sorted


def python_commands(text: str, variables: dict | None = None, source: str = "<script>") -> list[Command]:
    """Every python command the script runs, in order, expanded as bash would (`variables`: the starting
    shell variables, by default this process's environment, as a shell started here sees)."""
    return read_script(text, variables, source)[0]


def read_script(text: str, variables: dict | None = None, source: str = "<script>"):
    """(python commands, skipped commands as (line, program))."""
    state = _State(variables, source)
    state.run(Lexer(text, source).statements())
    return state.commands, state.skipped


def markdown_commands(text: str, source: str, variables: dict | None = None) -> list[Command]:
    """The python commands of a markdown file's ```bash / sh / shell / untagged blocks, read in turn by one
    shell (an `export` in one block holds in the next); an untagged block that is not bash is passed over."""
    state, fence, block = _State(variables, source), None, []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        match = re.match(r"\s*(`{3,}|~{3,})\s*\{?\.?([^`\s}]*)", line)
        if fence is None and match:
            fence, tag, block, start = match[1], match[2].lower(), [], number + 1
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence, kept = None, len(state.commands)
            try:
                if tag in ("", "bash", "sh", "shell", "zsh"):
                    state.run(Lexer("\n".join(block), source, start).statements())
            except PeftlabError:
                if tag:
                    raise
                del state.commands[kept:]      # an untagged block of output or prose
        elif fence is not None:
            block.append(line)
    return state.commands


def command_from_argv(argv: list[str]) -> Command:
    """`peftlab train -- [VAR=value] python SCRIPT ARGS`: the command line as the shell already split it."""
    words, env = list(argv), {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, env[name] = words.pop(0).partition("=")
    command = _python_command(words, env, 1, "the command line", ()) if words and _is_python(words[0]) else None
    if command is None:
        raise PeftlabError(f"the command line: expected `python SCRIPT ARGS` (or torchrun, accelerate launch), "
                           f"got {' '.join(argv)[:60]!r}")
    return command


class _Exit(Exception):
    """`exit` / `return`: the script stops there."""


class _State:
    """The shell's variables while the statements are read in order, and the commands they run."""

    def __init__(self, variables: dict | None, source: str):
        self.variables = dict(os.environ if variables is None else variables)
        self.source, self.line, self.ok, self.status_names = source, 1, True, set()
        self.taint: dict[str, set] = {}        # variable -> the unset names its value was built from
        self.unknown: set[str] = set()         # variables set by a command substitution
        self.exported: set[str] = set()
        self.assumed: set[str] = set()         # the names the branch or loop being read depends on
        self.commands: list[Command] = []
        self.skipped: list[tuple[int, str]] = []

    def cannot(self, construct: str) -> PeftlabError:
        construct = " ".join(construct.replace("\\\n", " ").split())
        construct = construct if len(construct) <= 60 else construct[:57] + "..."
        return PeftlabError(f"{self.source}:{self.line}: cannot read '{construct}' {HINT}")

    def run(self, statements: list[Statement]) -> None:
        try:
            self.block(_keywords_apart(statements))
        except _Exit:
            pass

    def block(self, statements: list[Statement]) -> None:
        index = 0
        while index < len(statements):
            statement = statements[index]
            self.line, head = statement.line, statement.head
            if head in ("if", "for"):
                index = (self.if_block if head == "if" else self.for_block)(statements, index)
                continue
            if head in REFUSED or head in KEYWORDS or any(word[0][0] == "op" for word in statement.words):
                raise self.cannot(head if head in REFUSED or head in KEYWORDS else statement.raw)
            self.simple(statement)
            index += 1

    def block_end(self, statements, index: int, openers: tuple, closer: str) -> int:
        depth = 0
        for position in range(index, len(statements)):
            head = statements[position].head
            depth += (head in openers) - (head == closer)
            if depth == 0:
                return position
        raise PeftlabError(f"{self.source}:{statements[index].line}: '{statements[index].head}' without '{closer}'")

    def if_block(self, statements, index: int) -> int:
        end = self.block_end(statements, index, ("if",), "fi")
        branches, condition, body, depth = [], statements[index], None, 0
        for statement in statements[index + 1:end]:
            head = statement.head
            if depth == 0 and head == "then" and body is None:
                body = []
            elif depth == 0 and head in ("elif", "else") and body is not None:
                branches.append((condition, body))
                condition, body = (statement, None) if head == "elif" else (None, [])
            elif body is None:                 # a condition of more than one command
                raise self.cannot(f"{condition.raw} {statement.sep.strip() or ';'} {statement.raw}")
            else:
                depth += (head == "if") - (head == "fi")
                body.append(statement)
        if body is None:
            raise self.cannot(condition.raw)
        saved, seen = self.assumed, set()
        for condition, body in branches + [(condition, body)]:
            if condition is None or self.test(condition.words[1:], condition, seen):
                self.assumed = saved | seen            # what runs depends on the names tested
                self.block(body)
                break
        self.assumed = saved
        return end + 1

    def for_block(self, statements, index: int) -> int:
        end = self.block_end(statements, index, ("for", "while", "until", "select"), "done")
        head, body = statements[index], statements[index + 1:end]
        name = plain_word(head.words[1]) if len(head.words) > 2 else None
        if not (name and re.fullmatch(r"[A-Za-z_]\w*", name) and plain_word(head.words[2]) == "in"
                and body and body[0].head == "do"):
            raise self.cannot(head.raw)
        names = set()
        values = [value for word in head.words[3:] for value in self.expand(word, names)]
        if any(n[0] in "$`" or n in self.unknown for n in names):
            raise self.cannot(head.raw)
        if not values and names:               # bash loops zero times: say why rather than run nothing
            raise PeftlabError(f"{self.source}:{head.line}: '{head.raw}' loops over nothing: "
                               f"{', '.join(sorted(names))} not set")
        saved, self.assumed = self.assumed, self.assumed | names
        for value in values:
            self.assign(name, value, set(names))
            self.block(body[1:])
        self.assumed = saved
        return end + 1

    def test(self, words, statement: Statement, names: set) -> bool:
        """A `[ ]`, `[[ ]]`, `test`, `true` or `false` command, on known values only."""
        self.line = statement.line
        if not words or plain_word(words[0]) not in TESTS:
            raise self.cannot(statement.raw)
        split = plain_word(words[0]) != "[["
        result = _evaluate([value for word in words for value in self.expand(word, names, split)])
        if result is None or any(n[0] in "$`" or n in self.unknown for n in names):
            raise self.cannot(statement.raw)
        return result

    def simple(self, statement: Statement) -> None:
        if statement.sep in ("&&", "||") and self.ok != (statement.sep == "&&"):
            return                             # a && b: b runs when a succeeded; a || b: when it failed
        names = set(self.status_names) if statement.sep in ("&&", "||") else set()
        head, words = statement.head, statement.words
        if head in TESTS:
            self.ok, self.status_names = self.test(words, statement, names), names
            return
        self.ok, self.status_names = True, set()
        if head in ("exit", "return"):
            raise _Exit
        if head in ("export", "unset"):
            return (self.export if head == "export" else self.unset)(words[1:], names)
        count = next((n for n, word in enumerate(words) if not _is_assignment(word)), len(words))
        if count == len(words):                # NAME=value ...: the shell's own variables, in order
            for word in words:
                name, value, taint, unknown = self.assignment(word)
                self.assign(name, value, taint | names, unknown)
            return
        prefix = {parsed[0]: parsed[1:] for parsed in map(self.assignment, words[:count])}
        self.command(statement, [value for word in words[count:] for value in self.expand(word, names)],
                     prefix, names)

    def command(self, statement: Statement, fields: list, prefix: dict, names: set) -> None:
        while fields and fields[0] in ("nohup", "time", "exec", "env", "command"):
            wrapper = fields.pop(0)
            while wrapper == "env" and fields and ASSIGNMENT.match(fields[0]):
                name, _, value = fields.pop(0).partition("=")
                prefix[name] = (value, set(), False)
        program = os.path.basename(fields[0]) if fields else ""
        if fields and _is_python(program):
            if any(n[0] in "$`" for n in names):
                raise self.cannot(statement.raw)
            env = {name: self.variables[name] for name in sorted(self.exported) if name in self.variables}
            env.update({name: value for name, (value, _, _) in prefix.items()})
            unresolved = set().union(names, self.assumed, *(taint for _, taint, _ in prefix.values()))
            command = _python_command(fields, env, statement.line, self.source, tuple(sorted(unresolved)))
            if command is not None:
                return self.commands.append(command)
        if program in REFUSED:
            raise self.cannot(program)
        if program:
            self.skipped.append((statement.line, program))

    def export(self, words, names: set) -> None:
        for word in words:
            parsed = self.assignment(word) if _is_assignment(word) else None
            if parsed:
                self.assign(parsed[0], parsed[1], parsed[2] | names, parsed[3])
            exported = [parsed[0]] if parsed else self.expand(word, set())
            if any(not re.fullmatch(r"[A-Za-z_]\w*", name) for name in exported):
                raise self.cannot("export " + " ".join(exported))
            self.exported.update(exported)

    def unset(self, words, names: set) -> None:
        for name in (value for word in words for value in self.expand(word, set()) if value[:1] != "-"):
            self.variables.pop(name, None), self.taint.pop(name, None)
            self.unknown.discard(name), self.exported.discard(name)

    def assignment(self, word) -> tuple:
        """NAME=value or NAME+=value: (name, value, names it was built from, set by a substitution?)."""
        match = ASSIGNMENT.match(word[0][1])
        rest, names, name = word[0][1][match.end():], set(), match[1]
        value = self.expand(([("lit", rest)] if rest else []) + word[1:], names, split=False)[0]
        substituted = {n for n in names if n[0] in "$`"}
        if substituted:                        # never run: the value stays ${NAME}, and NAME is listed
            value, names = "${%s}" % name, (names - substituted) | {name}
        if match[2] == "+=":
            value, names = self.variables.get(name, "") + value, names | self.taint.get(name, set())
        return name, value, names, bool(substituted) or (match[2] == "+=" and name in self.unknown)

    def assign(self, name: str, value: str, names: set, unknown: bool = False) -> None:
        self.variables[name], self.taint[name] = value, names | self.assumed
        (self.unknown.add if unknown else self.unknown.discard)(name)

    def expand(self, word, names: set, split: bool = True) -> list[str]:
        """A word's fields: parameters expanded, unquoted values split at whitespace, quotes removed."""
        fields, current, keep, parts = [], "", False, list(word)
        while parts:
            kind, text = parts.pop(0)
            if kind in ("lit", "q", "sub"):
                if kind == "sub":
                    names.add(text)            # never run; whoever needs its value is refused
                current, keep = current + ("" if kind == "sub" else text), keep or kind != "lit"
                continue
            value = text if kind == "value" else self.parameter(text, names)
            if isinstance(value, list):        # ${NAME:-word}: the word's parts, quoted as the word is
                quoted = {"lit": "q", "var": "qvar"} if kind == "qvar" else {"lit": "value"}
                parts[:0] = [(quoted.get(part_kind, part_kind), part) for part_kind, part in value]
            elif kind == "qvar" or not split:
                current, keep = current + value, keep or kind == "qvar"
            else:
                for number, piece in enumerate(value.split()):
                    if (number or value[:1].isspace()) and (current or keep):
                        fields.append(current)
                        current, keep = "", False
                    current += piece
                if value[-1:].isspace() and (current or keep):
                    fields.append(current)
                    current, keep = "", False
        return fields + [current] if current or keep or not split else fields

    def parameter(self, inner: str, names: set) -> str | list:
        """$NAME's value; the parts of `word` where ${NAME:-word} or ${NAME:+word} gives it."""
        match = PARAMETER.fullmatch(inner)
        if not match:
            raise self.cannot("${" + inner + "}")
        name, op, word = match.groups()
        value = self.variables.get(name)
        given = value is not None and (value != "" or ":" not in (op or ""))
        if op and (op.endswith("+") or not given):
            return Lexer(word, self.source, self.line).one_word() if given == op.endswith("+") else ""
        if value is None:
            names.add(name)
        names.update(self.taint.get(name, ()))
        return value or ""


def _is_assignment(word) -> bool:
    return word[0][0] == "lit" and bool(ASSIGNMENT.match(word[0][1]))


def _keywords_apart(statements: list[Statement]) -> list[Statement]:
    """`then cmd`, `do cmd`, `else cmd`: the keyword, then the command."""
    out = []
    for statement in statements:
        while statement.head in ("then", "do", "else") and len(statement.words) > 1:
            out.append(Statement(statement.line, statement.sep, statement.words[:1], statement.head))
            statement = Statement(statement.line, ";", statement.words[1:], statement.raw[len(out[-1].raw):])
        out.append(statement)
    return out


def _evaluate(fields: list[str]) -> bool | None:
    """test's verdict on expanded arguments, or None for a test that needs the file system or more."""
    program, args = fields[0], fields[1:]
    if program in ("true", "false"):
        return program == "true"
    if TESTS[program]:
        if args[-1:] != [TESTS[program]]:
            return None
        args = args[:-1]
    negate = len(args) > 1 and args[0] == "!"
    args = args[1:] if negate else args
    if len(args) < 2:
        result = bool(args) and args[0] != ""
    elif len(args) == 2 and args[0] in ("-z", "-n"):
        result = (args[1] == "") == (args[0] == "-z")
    elif len(args) == 3 and args[1] in ("=", "==", "!="):
        result = (args[0] == args[2]) == (args[1] != "!=")
    elif len(args) == 3 and args[1] in INT_TESTS and all(re.fullmatch(r"-?\d+", a) for a in args[::2]):
        result = INT_TESTS[args[1]](int(args[0]), int(args[2]))
    else:
        return None
    return result != negate


def _is_python(program: str) -> bool:
    program = os.path.basename(program)
    return bool(PYTHON.fullmatch(program)) or program in ("torchrun", "accelerate") or program.endswith(".py")


def _python_command(words: list, env: dict, line: int, source: str, unresolved: tuple) -> Command | None:
    """`python [-u] [-m launcher OPTIONS] SCRIPT ARGS`, `torchrun OPTIONS SCRIPT ARGS`, `accelerate launch
    OPTIONS SCRIPT ARGS`, `./SCRIPT.py ARGS`: the script, its arguments and the process count (None:
    `python -c`, pip, `accelerate config`)."""
    words, counts = list(words), ("--nproc_per_node", "--nproc-per-node")
    if words[0].endswith(".py"):
        return Command(words[0], tuple(words[1:]), env, 1, line, unresolved)
    program = os.path.basename(words.pop(0))
    if program in ("accelerate", "torchrun"):
        if program == "accelerate" and words[:1] != ["launch"]:
            return None
        flags = counts if program == "torchrun" else ("--num_processes", "--num-processes")
        return _launched(words[program == "accelerate":], env, line, source, unresolved, flags)
    while words and words[0].startswith("-") and words[0] not in ("-m", "-c", "-"):
        if words.pop(0) in ("-W", "-X") and words:
            words.pop(0)                       # interpreter options: no effect on the experiment
    if words[:1] == ["-c"] or words[:2] == ["-m", "pip"]:
        return None
    if words[:1] == ["-m"]:
        module = words[1] if len(words) > 1 else ""
        if module not in LAUNCH_MODULES:
            raise PeftlabError(f"{source}:{line}: `python -m {module}` is not a seed script; give the script's path")
        return _launched(words[2:], env, line, source, unresolved, counts)
    if not words or words[0] == "-":
        raise PeftlabError(f"{source}:{line}: a python command without a script")
    return Command(words[0], tuple(words[1:]), env, 1, line, unresolved)


def _launched(words: list, env: dict, line: int, source: str, unresolved: tuple, counts: tuple) -> Command:
    processes = 1
    while words and words[0].startswith("-"):
        name, given, value = words.pop(0).partition("=")
        if not given and name not in BOOLEAN_LAUNCH_FLAGS and words and not words[0].startswith("-") \
                and not words[0].endswith(".py"):
            value = words.pop(0)
        if name in counts:
            if not value.isdigit() or int(value) < 1:
                raise PeftlabError(f"{source}:{line}: {name} must be a positive integer, got {value!r}")
            processes = int(value)
    if not words:
        raise PeftlabError(f"{source}:{line}: the launcher is given no script")
    return Command(words[0], tuple(words[1:]), env, processes, line, unresolved)
