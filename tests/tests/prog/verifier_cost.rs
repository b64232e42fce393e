//! What each TC program costs the verifier (instructions it walked to
//! accept it) and its size once translated: a guard against a change that
//! makes a program's paths multiply. The kernel refuses a program past one
//! million verified instructions (and 6.1-era kernels take long on the way
//! there); the budget here leaves room under that.
use sluice_node::datapath::loader::ALL_PROGRAMS;
use sluice_tests::prog_test::TestDatapath;

/// Verified instructions a program may take before this test calls it a
/// regression to look at.
const VERIFIED_BUDGET: u32 = 400_000;

#[test]
fn every_tc_program_verifies_within_budget() {
    let dp = TestDatapath::load().unwrap();
    let mut report = Vec::new();
    for name in ALL_PROGRAMS {
        let prog = aya::programs::SchedClassifier::from_pin(dp.pins().prog(name)).unwrap();
        let info = prog.info().unwrap();
        let verified = info.verified_instruction_count().unwrap_or(0);
        report.push(format!("{name}: {verified} verified, {} bytes translated", info.size_translated().unwrap_or(0)));
        assert!(verified > 0, "{name}: the kernel reported no verified instruction count");
        assert!(verified < VERIFIED_BUDGET, "{name}: {verified} verified instructions\n{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}
