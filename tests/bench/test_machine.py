from milsdk.bench.machine import machine_info


def test_machine_info_names_cpu_versions_date_and_load():
    info = machine_info()
    assert info["cpu"] and info["cores"] >= 1 and info["memory_gb"] > 0
    assert info["versions"]["numpy"][0].isdigit() and info["versions"]["onnxruntime"][0].isdigit()
    assert info["date"].endswith("UTC") and len(info["load_average"]) == 3
