"""examples/loraplus_basics.py runs and shows what it claims."""

from example_runner import example_path, load_example, run_example

EXAMPLE = example_path("loraplus_basics")


def test_loraplus_example_ratio_one_is_plain_and_ratio_sixteen_learns_faster():
    module = load_example("loraplus_basics")
    result = module.main(steps=60)
    assert result["identical"]
    assert result["plus"][0] == result["plain"][0]  # same start
    assert result["plus"][-1] < result["plain"][-1]  # on this toy task the faster B wins


def test_loraplus_example_runs_as_a_script():
    done = run_example("loraplus_basics")
    assert done.returncode == 0, done.stderr
    assert "bit for bit: True" in done.stdout
    assert len(EXAMPLE.read_text().splitlines()) < 100
